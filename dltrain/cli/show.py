"""`dltrain show`: its options and the line it prints."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from dltrain.cli.app import (
    ConfigArgument,
    DeviceOption,
    JsonOption,
    QuietOption,
    SetOption,
    app,
    friendly,
    note,
    out_option,
    overrides,
    print_json,
    say,
)


@app.command("show")
@friendly
def show(
    config: ConfigArgument,
    set_: SetOption = None,
    split: Annotated[
        Literal["train", "val"],
        typer.Option(
            "--split", help="train: shuffled and augmented, as training reads it; val: as is."
        ),
    ] = "train",
    # No min= here: Typer's range errors are a usage box; show.check_options says one line.
    count: Annotated[
        int, typer.Option("--n", help="Images to draw; more than a batch reads the next ones.")
    ] = 32,
    out_path: out_option(
        "Folder for batch-<split>.png, or the image file (.png, .svg or .pdf); default "
        "runs/<name>/show/."
    ) = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the training loader's shuffle and augmentation (default: the "
            "config's seed: the first batch training takes).",
        ),
    ] = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Draw a batch as the model receives it: the data built as `dltrain train` builds it,
    un-normalized to show, each image with its class name."""
    from dltrain.config import load_config
    from dltrain.tools.show import check_options, show_batch

    check_options(split, count, out_path)  # before the config is read: a typo fails at once
    cfg = load_config(config, overrides(set_, device))
    shown = show_batch(cfg, split, count, out_path, seed)
    for text in shown["notes"]:
        note(text)
    if as_json:
        print_json(shown)
        return
    low, high = shown["range"]
    values = "normalized to" if shown["normalized"] else "not normalized, in"
    whole = " (the whole split)" if shown["images"] < count else ""
    shape = "x".join(str(n) for n in shown["shape"])
    # One result line, --quiet or not.
    say(
        f"wrote {shown['path']}: {shown['images']} {split} images{whole}, {shape}, "
        f"{values} [{low:.2f}, {high:.2f}]"
    )
