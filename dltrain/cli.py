"""The `dltrain` command line: the only module that prints or exits.

torch is imported inside the commands that train or evaluate, never at module level, so
`dltrain --help` and `dltrain config …` start fast.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dltrain import __version__
from dltrain.errors import DltrainError

app = typer.Typer(
    help="Train image classifiers from YAML configs.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs and their schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: KEY=VALUE (dotted key), repeatable."),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")
]


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(err: DltrainError) -> None:
    lines = str(err).splitlines() or [type(err).__name__]
    console = _err()
    for line in lines:
        console.print(f"error: {line}", style="bold red", markup=False, soft_wrap=True)
    raise typer.Exit(err.exit_code)


def _friendly(command):
    """Turn our errors into red lines and exit codes; anything else is a bug and keeps its
    traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DltrainError as err:
            _fail(err)

    return wrapper


def _version(value: bool) -> None:
    if value:
        _out().print(f"dltrain {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Train image classifiers from YAML configs."""


# --- train -------------------------------------------------------------------------------


class TrainReport:
    """Shows training as it happens: a live bar on a terminal, one line per epoch otherwise."""

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.bar = None
        self.last_refresh = 0.0

    def __call__(self, event: str, info: dict) -> None:
        getattr(self, f"on_{event}")(info)

    def on_start(self, info: dict) -> None:
        sizes = info["sizes"]
        self.console.print(
            f"run {info['run_dir']}  device {info['device']}  params {info['params']:,}  "
            f"train/val/test {sizes['train']}/{sizes['val']}/{sizes['test']}",
            soft_wrap=True,
            markup=False,
        )
        self.epochs, self.batches = info["epochs"], info["batches"]
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=4,
                transient=True,
            )
            self.bar.start()

    def on_note(self, info: dict) -> None:
        self.console.print(f"note: {info['text']}", style="yellow", markup=False, soft_wrap=True)

    def on_epoch_start(self, info: dict) -> None:
        self.epoch_started = time.perf_counter()
        if self.bar is not None:
            self.task = self.bar.add_task(
                "", total=self.batches, epoch=info["epoch"], epochs=self.epochs, rate=""
            )

    def on_batch(self, info: dict) -> None:
        now = time.perf_counter()
        # A few refreshes a second are enough for a human; more would slow short steps.
        if self.bar is None or now - self.last_refresh < 0.2:
            return
        self.last_refresh = now
        rate = info["seen"] / max(now - self.epoch_started, 1e-9)
        self.bar.update(self.task, completed=info["step"], rate=f"{rate:,.0f} samples/s")

    def on_epoch(self, info: dict) -> None:
        row = info["row"]
        if self.bar is not None:
            self.bar.remove_task(self.task)
        mark = "  *best" if info["improved"] else ""
        self.console.print(
            f"epoch {row['epoch']}/{info['epochs']}  train_loss {row['train_loss']:.4f}  "
            f"train_acc {row['train_acc']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_acc {row['val_acc']:.4f}  {row['seconds']:.2f}s{mark}",
            soft_wrap=True,
            markup=False,
        )

    def on_end(self, info: dict) -> None:
        if self.bar is not None:
            self.bar.stop()
        summary = info["summary"]
        best = summary["best_metrics"]
        table = Table(title="summary", show_header=False)
        table.add_row("status", summary["status"].replace("_", " "))
        if summary["stop_reason"]:
            table.add_row("why", summary["stop_reason"])
        table.add_row("best epoch", f"{summary['best_epoch']} of {summary['epochs_run']}")
        table.add_row("val accuracy", f"{best['val_acc']:.4f}")
        table.add_row("val loss", f"{best['val_loss']:.4f}")
        table.add_row("train accuracy", f"{best['train_acc']:.4f}")
        table.add_row("seconds per epoch", f"{summary['seconds_per_epoch']:.2f}")
        table.add_row("run folder", info["run_dir"])
        self.console.print(table)
        if summary["stop_reason"]:
            self.console.print(summary["stop_reason"], markup=False, soft_wrap=True)


@app.command()
@_friendly
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    set_: SetOption = None,
    device: DeviceOption = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Folder for this run's outputs.")
    ] = None,
) -> None:
    """Train a model from a YAML config."""
    from dltrain.config import load_config

    overrides = list(set_ or []) + ([f"device={device}"] if device else [])
    cfg = load_config(config, overrides)
    from dltrain.engine import fit
    from dltrain.runs import new_run_dir

    folder = new_run_dir(cfg, run_dir)
    fit(cfg, folder, progress=TrainReport(_out()))


# --- eval --------------------------------------------------------------------------------


@app.command("eval")
@_friendly
def eval_(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint file (best.pt or last.pt).")],
    split: Annotated[str, typer.Option("--split", help="val or test.")] = "val",
    set_: SetOption = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Measure a checkpoint on the validation or test split."""
    if split not in ("val", "test"):
        raise DltrainError(f"--split {split!r}: expected val or test")
    from dltrain.evaluation import evaluate_checkpoint

    metrics = evaluate_checkpoint(ckpt, split, device, list(set_ or []))
    if as_json:
        _out().print_json(json.dumps(metrics))
        return
    _out().print(
        f"{split}: accuracy {metrics['acc']:.4f}  loss {metrics['loss']:.4f}  "
        f"({metrics['samples']} samples, {ckpt}, epoch {metrics['epoch']})",
        markup=False,
        soft_wrap=True,
    )


# --- config ------------------------------------------------------------------------------


@config_app.command("show")
@_friendly
def config_show(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    set_: SetOption = None,
) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as YAML."""
    from dltrain.config import load_config

    _out().print(load_config(config, list(set_ or [])).to_yaml(), markup=False, end="")


@config_app.command("schema")
def config_schema() -> None:
    """Print the config's JSON schema (for editor autocompletion and validation)."""
    from dltrain.config import Config

    print(json.dumps(Config.model_json_schema(), indent=2))


def main() -> None:
    app()
