"""`dltrain lr-find`: a learning-rate range test (fastai's method) on one or several seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dltrain.cli.app import (
    ConfigArgument,
    DeviceOption,
    JsonOption,
    OutOption,
    QuietOption,
    SetOption,
    app,
    err,
    friendly,
    mode,
    note,
    overrides,
    print_json,
    say,
)
from dltrain.errors import Interrupted


@app.command("lr-find")
@friendly
def lr_find(
    config: ConfigArgument,
    set_: SetOption = None,
    device: DeviceOption = None,
    # No min= here: Typer's range errors are a usage box; lr_find.check_options says one line.
    steps: Annotated[
        int, typer.Option("--steps", help="Mini-batches of the probe (optimizer steps).")
    ] = 100,
    start: Annotated[float, typer.Option("--start", help="First learning rate.")] = 1e-7,
    end: Annotated[float, typer.Option("--end", help="Last learning rate.")] = 10.0,
    seeds: Annotated[
        int, typer.Option("--seeds", help="Repeat on this many seeds (seed, seed+1, ...).")
    ] = 1,
    out_dir: OutOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Suggest a learning rate: a copy of the model trains with the rate rising from --start
    to --end; the valley and the steepest point of its smoothed loss.

    Writes lr_find.png and lr_find.json to --out (default runs/<name>/lr-find-<time>).
    The config's model and its training runs are left untouched.
    """
    from dltrain.config import load_config
    from dltrain.tools import lr_find as finder

    finder.check_options(steps, start, end, seeds)
    cfg = load_config(config, overrides(set_, device))
    shown = mode(quiet, as_json)
    if shown == "normal":
        say(
            f"lr-find {cfg.name}: {cfg.optim.name}, batch {cfg.data.batch_size}, {seeds} "
            f"seed(s) × {steps} steps, learning rate {start:g} to {end:g}",
            err(),
        )
    try:
        result = finder.run(cfg, steps, start, end, seeds, out_dir, _reporter(shown))
    except KeyboardInterrupt:
        raise Interrupted("lr-find stopped by Ctrl-C; nothing was written", 130) from None
    if shown == "json":  # lr_find.json less the curves and the config (the file has them)
        drop = ("seeds", "config")
        kept = {key: value for key, value in result.items() if key not in drop}
        print_json({**kept, "json": str(Path(result["folder"]) / "lr_find.json")})
    elif shown == "quiet":
        summary = result["summary"]
        say(summary["set"] or f"no suggestion (see {result['folder']})")
    else:
        _show(result)


def _reporter(shown: str):
    """Notes always (stderr); each seed's line only in the normal mode."""

    def report(event) -> None:
        from dltrain.reporting.events import Note

        if isinstance(event, Note):
            note(event.text)
        elif shown == "normal":
            _seed_line(event)

    return report


def _seed_line(event) -> None:
    curve = event.curve  # lr_find.ProbeEnd
    found = ", ".join(f"{rule} {_lr(curve[rule])}" for rule in ("valley", "steepest"))
    say(f"seed {curve['seed']}: {found} ({curve['why']})", err())


def _lr(value: float | None) -> str:
    return "none" if value is None else f"{value:.3g}"


def _show(result: dict) -> None:
    summary, count = result["summary"], result["summary"]["seeds"]
    for rule in ("valley", "steepest"):
        spread = summary[f"{rule}_range"]
        across = ""
        if count > 1 and spread is not None:
            low, high = spread
            across = f"  (range over {count} seeds: {low:.3g} to {high:.3g}, {high / low:.1f}×)"
        say(f"{rule:<9}{_lr(summary[rule])}{across}")
    if summary["unreliable"]:
        note(summary["unreliable"])
    if summary["set"]:
        say(summary["set"])
    else:
        note(
            "no suggestion: the smoothed loss did not fall before the probe stopped; start "
            f"lower than --start {result['start']:g} or probe longer (--steps)"
        )
    folder = Path(result["folder"])
    say(f"wrote {folder / 'lr_find.png'} and {folder / 'lr_find.json'}")
