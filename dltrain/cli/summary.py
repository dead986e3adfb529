"""`dltrain summary`: the model a config builds, layer by layer, before anything trains.

The figures come from `models.layer_summary` (one image of zeros through the model in eval
mode); this module only lays them out. The data's shape comes from `data.data_info`: no data
is read or downloaded, no weights are loaded, nothing is written.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from dltrain.cli.app import (
    ConfigArgument,
    DeviceOption,
    JsonOption,
    QuietOption,
    SetOption,
    app,
    friendly,
    out,
    overrides,
    print_json,
    say,
)


@app.command("summary")
@friendly
def summary(
    config: ConfigArgument,
    set_: SetOption = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Show the model's layers: output shape, parameters and multiply-accumulates per image,
    and an estimate of a training batch's activation memory."""
    from dltrain.config import load_config
    from dltrain.data import data_info, for_model
    from dltrain.models import build_model, layer_summary, model_input
    from dltrain.training.runtime import precision_tools, resolve_device

    cfg = load_config(config, overrides(set_, device))
    # The precision training would use on the config's device sizes the activations; the
    # counting itself runs on the CPU, without the weights (the shapes are the same).
    precision = precision_tools(resolve_device(cfg.device), cfg.train.precision).name
    wants = model_input(cfg.model)
    info = data_info(for_model(cfg.data, wants), rgb=wants.rgb)
    model = build_model(info, cfg.model, weights=False)
    figures = layer_summary(model, info, cfg.data.batch_size, precision)
    if as_json:
        height, width = info.image_size
        model_facts = {"name": cfg.name, "model": cfg.model.name, "dataset": info.name}
        shape = {"input": [info.channels, height, width], "classes": info.num_classes}
        print_json({**model_facts, **shape, **figures})
    else:
        _show(cfg, info, figures, quiet)


def _show(cfg, info, figures: dict, quiet: bool = False) -> None:
    """The table of layers (not when quiet), then the totals and what the activation figure
    counts."""
    console, totals = out(), figures["totals"]
    height, width = info.image_size
    say(
        f"{cfg.name}: {cfg.model.name} on {info.name}, input {info.channels}×{height}×{width}, "
        f"{info.num_classes} classes",
        console,
    )
    if not quiet:
        console.print(_table(figures))
    say(
        f"params {totals['params']:,} ({totals['trainable']:,} trainable, "
        f"{totals['frozen']:,} frozen)  MACs {short_count(totals['macs'])} per image "
        f"({totals['macs']:,}: matmuls and convolutions, as torch's FlopCounterMode counts them)",
        console,
    )
    batch, precision = totals["batch_size"], totals["precision"]
    say(
        f"activations ≈ {short_bytes(totals['activation_bytes'])} per batch of {batch} at "
        f"{precision}: an estimate, the layers' outputs that are new tensors (what backward "
        "keeps, roughly); not counted: the input batch, weights, gradients, optimizer state, "
        "max-pool indices, dropout masks and temporary buffers",
        console,
    )


def _table(figures: dict) -> Table:
    """One row per layer and the totals. On a narrow terminal only the type is cut short,
    never a layer's name or a number."""
    from rich import box

    cells = []
    for row in [*figures["rows"], None]:
        row = row or {**figures["totals"], "name": "total", "type": "", "output": None}
        shape = "" if row["output"] is None else "×".join(map(str, row["output"]))
        counts = (f"{row['trainable']:,}", f"{row['frozen']:,}", short_count(row["macs"]))
        cells.append((row["name"] or "(model)", row["type"], shape, *counts))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for index, name in enumerate(("layer", "type", "output", "trainable", "frozen", "MACs")):
        widest = max(len(name), *(len(cell[index]) for cell in cells))
        table.add_column(
            name,
            justify="left" if index < 2 else "right",
            no_wrap=name != "type",
            min_width=None if name == "type" else widest,
            overflow="ellipsis",
        )
    for cell in cells[:-1]:
        table.add_row(escape(cell[0]), *cell[1:])
    table.add_section()
    table.add_row(*cells[-1])
    return table


def short_count(n: int) -> str:
    """A count in three digits: 842, 50.4k, 1.11G (MACs)."""
    return _short(n, 1000, ("", "k", "M", "G", "T", "P"))


def short_bytes(n: int) -> str:
    """Bytes in binary units: 512 B, 97.2 KiB, 75.0 MiB."""
    return _short(n, 1024, (" B", " KiB", " MiB", " GiB", " TiB", " PiB"))


def _short(n: int, base: int, units: tuple[str, ...]) -> str:
    """Three significant digits; a step up from 999.5 on, so no figure shows four digits."""
    value, unit = float(n), units[0]
    for bigger in units[1:]:
        if value < 999.5:
            break
        value, unit = value / base, bigger
    if unit == units[0]:
        return f"{n:,}{unit}"
    digits = 2 if value < 9.995 else 1 if value < 99.95 else 0
    return f"{value:.{digits}f}{unit}"
