"""`dltrain models`: the model names a config accepts, from the model-facts table (no torch)."""

from __future__ import annotations

import difflib
import json
from typing import Annotated

import typer

from dltrain.cli.app import JsonOption, QuietOption, app, friendly, note, out, say
from dltrain.errors import DltrainError

COLUMNS = ("name", "source", "params", "ImageNet weights", "input size")


@app.command("models")
@friendly
def models(
    pattern: Annotated[
        str | None, typer.Argument(help="A glob on the name, e.g. '*convnext*' or 'timm/*'.")
    ] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Only models with ImageNet weights.")
    ] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """List the models a config's model.name accepts: the course's four, torchvision's
    classifiers and timm's (timm/<name>, with the timm extra); parameters at 1,000 classes,
    ImageNet weights, the input size the weights were made at and the smallest one taken."""
    from dltrain.models import facts

    rows = facts.listing(pattern, pretrained)
    if not rows:
        raise DltrainError(_nothing(pattern, pretrained, facts.names()))
    if as_json:
        print(json.dumps([_record(name, row) for name, row in rows]))
    elif quiet:  # the names, one a line, for scripts
        for name, _ in rows:
            say(name)
    else:
        _show([_cells(name, row) for name, row in rows])
    if not facts.timm_installed():
        note(f"timm's models (timm/<name>) are listed once timm is installed: {facts.TIMM_EXTRA}")


def _nothing(pattern: str | None, pretrained: bool, names: list[str]) -> str:
    which = "with ImageNet weights " if pretrained else ""
    close = difflib.get_close_matches((pattern or "").strip("*"), names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"no model {which}matches {pattern!r} (a glob: '*convnext*'){hint}"


def _record(name: str, row: dict) -> dict:
    keys = ("source", "params", "weights", "size", "min_size", "fixed")
    record = {"name": name, **{key: row.get(key) for key in keys}}
    if isinstance(record["min_size"], dict):  # alexnet's: by stem
        record["min_size"] = row["min_size"][True]
    return record


def _cells(name: str, row: dict) -> tuple[str, ...]:
    record = _record(name, row)
    params = f"{record['params']:,}" if record["params"] else "-"
    size = record["size"]
    if size is None:
        shown = "any"  # mlp and cnn take the data's size
    elif record["fixed"]:
        shown = f"{size} only"
    else:
        smallest = f", min {record['min_size']}" if record["min_size"] else ""
        shown = f"{size}{smallest}"
    return (name, record["source"], params, record["weights"] or "-", shown)


def _show(cells: list[tuple[str, ...]]) -> None:
    """Plain aligned columns: a listing of a thousand rows reads and greps best that way."""
    console = out()
    widths = [
        max(len(column), *(len(cell[i]) for cell in cells)) for i, column in enumerate(COLUMNS)
    ]
    right = {2}  # numbers align right
    for line in [COLUMNS, *cells]:
        parts = [
            text.rjust(width) if i in right else text.ljust(width)
            for i, (text, width) in enumerate(zip(line, widths, strict=True))
        ]
        say("  ".join(parts).rstrip(), console)
    say(f"{len(cells):,} models", console)
