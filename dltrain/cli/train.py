"""`dltrain train`, `finetune` and `--resume`, and the live report of a training run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dltrain.cli.app import (
    DeviceOption,
    ForceOption,
    JsonOption,
    NprocOption,
    OutOption,
    QuietOption,
    SetOption,
    app,
    friendly,
    note,
    out,
    overrides,
    say,
)
from dltrain.errors import DltrainError
from dltrain.reporting import events
from dltrain.training import distributed


def per_class(counts: dict[str, int], shown: int = 20) -> str:
    """A class histogram in one line: each class's count up to `shown` classes, else a range."""
    if len(counts) <= shown:
        return ", ".join(f"{name} {count:,}" for name, count in counts.items())
    values = counts.values()
    return f"{len(counts)} classes, {min(values):,}-{max(values):,} each"


class TrainReport:
    """engine.fit's listener (it never asks to stop): a live bar on a terminal, one line per
    epoch otherwise; `quiet` shows notes and the summary only, `json` one object at the end."""

    def __init__(self, console: Console, mode: str = "normal"):
        self.console, self.mode = console, mode
        self.live = console.is_terminal and mode == "normal"
        self.bar, self.last_refresh = None, 0.0
        self.handlers = {
            events.Decode: self.decode,
            events.RunStart: self.start,
            events.Note: self.note,
            events.EpochStart: self.epoch_start,
            events.BatchEnd: self.batch,
            events.EpochEnd: self.epoch,
            events.RunEnd: self.end,
        }

    def __call__(self, event: events.Event) -> None:
        if self.mode == "normal" or isinstance(event, events.Note | events.RunEnd):
            self.handlers[type(event)](event)

    def decode(self, event: events.Decode) -> None:
        """An image folder decoded into memory before training: a bar with an ETA, on a
        terminal."""
        if not self.live:
            return
        from rich import progress

        if self.bar is None:  # one bar per split; it goes when the split is done
            self.bar = progress.Progress(
                progress.TextColumn(f"decoding the {event.split} images"),
                progress.BarColumn(),
                progress.MofNCompleteColumn(),
                progress.TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("", total=event.total)
        self.bar.update(self.task, completed=event.done)
        if event.done >= event.total:
            self.close()

    def start(self, event: events.RunStart) -> None:
        from dltrain.cli.summary import short_count

        facts = event.facts
        sizes, processes = facts.sizes, facts.processes
        say(
            f"run {event.run_dir}  device {facts.device} ({facts.precision})"
            + (f" × {processes} processes" if processes > 1 else "")
            + f"  input {'×'.join(map(str, facts.input))}"
            + (f" ({facts.input_from})" if facts.input_from else "")
            + f"  params {facts.params:,}  MACs {short_count(facts.macs)}/image  "
            f"train/val/test {sizes['train']}/{sizes['val']}/{sizes['test']}",
            self.console,
        )
        say(f"training images per class: {per_class(facts.class_counts)}", self.console)
        self.epochs, self.batches = event.epochs, event.batches
        if self.live:
            from rich import progress

            self.bar = progress.Progress(
                progress.TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                progress.BarColumn(),
                progress.MofNCompleteColumn(),
                progress.TextColumn("{task.fields[rate]}"),
                progress.TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=4,
                transient=True,
            )
            self.bar.start()

    def note(self, event: events.Note) -> None:
        note(event.text)

    def epoch_start(self, event: events.EpochStart) -> None:
        self.epoch_started = time.perf_counter()
        if self.bar is not None:
            self.task = self.bar.add_task(
                "", total=self.batches, epoch=event.epoch, epochs=self.epochs, rate=""
            )

    def batch(self, event: events.BatchEnd) -> None:
        now = time.perf_counter()
        # A few refreshes a second are enough for a human; more would slow short steps.
        if self.bar is None or now - self.last_refresh < 0.2:
            return
        self.last_refresh = now
        rate = event.seen / max(now - self.epoch_started, 1e-9)
        self.bar.update(self.task, completed=event.step, rate=f"{rate:,.0f} samples/s")

    def epoch(self, event: events.EpochEnd) -> None:
        row = event.row
        if self.bar is not None:
            self.bar.remove_task(self.task)
        mark = "  *best" if event.improved else ""
        gap = f"  gap {row['gap']:+.4f}" if row.get("gap") is not None else ""
        mixed = " (mixed)" if event.mixed else ""
        raw = _other(row)
        say(
            f"epoch {row['epoch']}/{event.epochs}  train_loss {row['train_loss']:.4f}  "
            f"train_acc {row['train_acc']:.4f}{mixed}  val_loss {row['val_loss']:.4f}  "
            f"val_acc {row['val_acc']:.4f}{raw}{gap}  {row['seconds']:.2f}s{mark}",
            self.console,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def end(self, event: events.RunEnd) -> None:
        self.close()
        summary = event.summary
        if summary.status in ("failed", "interrupted"):
            return  # the error line says why, once the engine raises it
        if self.mode == "json":
            print(json.dumps({**summary.to_dict(), "run_dir": str(event.run_dir)}))
            return
        restored = "best epoch restored" if summary.restored_best else "last epoch"
        if summary.final_weights:
            restored += ", " + WEIGHTS[summary.final_weights]
        rows = [
            ("status", summary.status.replace("_", " ")),
            ("why", summary.stop_reason),
            ("best epoch", f"{summary.best_epoch} of {summary.epochs_run}"),
        ]
        # A checkpoint gone on in a new folder: its best row may be elsewhere.
        best = summary.best_metrics or {}
        if best:
            rows.append(("val accuracy", f"{best['val_acc']:.4f}"))
            rows.append(("val loss", f"{best['val_loss']:.4f}"))
            rows.append(("train accuracy", f"{best['train_acc']:.4f} (running, in train mode)"))
        if best.get("gap") is not None:
            rows.append(("train accuracy, eval mode", f"{best['train_eval_acc']:.4f}"))
            rows.append(("train-val gap", f"{best['gap']:+.4f}"))
        rows += [
            ("overfitting", summary.overfitting),
            ("best.pt holds", _best_holds(summary)),
            ("final val accuracy", f"{summary.final_val['acc']:.4f} ({restored})"),
            ("seconds per epoch", f"{summary.seconds_per_epoch:.2f}"),
            ("run folder", str(event.run_dir)),
        ]
        table = Table(title="summary", show_header=False)
        for name, value in rows:
            if value:
                table.add_row(name, value)
        self.console.print(table)
        if summary.stop_reason:
            say(summary.stop_reason, self.console)


WEIGHTS = {"ema": "the EMA average", "trained": "the trained weights"}


def _other(row: dict) -> str:
    """With an EMA: which weights val_acc is of, and what the other validated."""
    from dltrain.training.summary import picked

    taken = picked(row)
    if taken is None:
        return ""
    other = "raw" if taken == "ema" else "ema"
    return f" [{taken}; {other.replace('raw', 'trained')} {row[f'val_acc_{other}']:.4f}]"


def _best_holds(summary: events.Summary) -> str | None:
    """With an EMA: which weights best.pt holds, and by how much they validated better."""
    best, row = summary.best_weights, summary.best_metrics
    if best is None:
        return None
    metric = summary.monitor.removeprefix("val_")
    gap = abs(row[f"val_{metric}_ema"] - row[f"val_{metric}_raw"])
    what = "higher loss" if metric == "loss" else "lower"
    other = "the trained weights" if best == "ema" else "the EMA"
    return f"{WEIGHTS[best]} (decay {summary.ema_decay:g}; {other} validated {gap:.4f} {what})"


def _mode(quiet: bool, as_json: bool) -> str:
    return "json" if as_json else "quiet" if quiet else "normal"


@app.command()
@friendly
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="YAML config file.")] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    out_dir: OutOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue a run: its folder (last.pt) or a checkpoint."),
    ] = None,
    nproc: NprocOption = 1,
) -> None:
    """Train a model from a YAML config, or continue a run with --resume."""
    from dltrain.config import load_config

    changes, mode = overrides(set_, device), _mode(quiet, as_json)
    if resume is None and config is None:
        raise DltrainError("give a config file to train, or --resume RUN_DIR to continue a run")
    if nproc > 1:
        if resume is None:
            load_config(config, changes)  # a bad config fails once, here
        elif not resume.exists():
            raise DltrainError(f"--resume {resume}: no such run folder or checkpoint")
        _launch(ctx, nproc)
    elif resume is not None:
        _resume(resume, config, out_dir, changes, mode)
    else:
        cfg = load_config(config, changes)
        folder, made = _run_folder(cfg, out_dir, force)
        run(cfg, folder, mode, new=True, made=made)


def _launch(ctx: typer.Context, nproc: int) -> None:
    """`--nproc N`: the user's own command line, less --nproc, in N processes started through
    torchrun's launcher."""
    if distributed.launched():
        raise DltrainError(
            "--nproc starts its own processes; under torchrun, leave it out (torchrun's "
            "--nproc-per-node says how many)"
        )
    args, argv = [], iter(ctx.meta["argv"])
    for arg in argv:
        if arg == "--nproc":
            next(argv, None)  # and its value
        elif not arg.startswith("--nproc="):
            args.append(arg)
    code = distributed.launch(nproc, args)
    if code:
        raise typer.Exit(code)


def _run_folder(cfg, run_dir: Path | None, force: bool) -> tuple[Path, tuple[Path, ...]]:
    """The new run's folder, and the folders made for it (fit takes them away again if the run
    fails before its first epoch). Under torchrun, rank 0 makes it and tells the others."""
    from dltrain.reporting.runs import made_run_dir
    from dltrain.training.runtime import join

    if not distributed.launched():
        return made_run_dir(cfg, run_dir, force=force)
    join(cfg)
    return distributed.from_main(lambda: made_run_dir(cfg, run_dir, force=force))


def run(cfg, folder: Path, mode: str = "normal", **kwargs) -> None:
    """engine.fit with the live report (fit draws the run's curves.png as it ends)."""
    from dltrain.training.engine import fit

    report = TrainReport(out(), mode)
    try:
        fit(cfg, folder, [report], **kwargs)
    finally:
        report.close()


def _resume(target: Path, config: Path | None, run_dir: Path | None, changes: list[str], mode):
    if config is not None or run_dir is not None:
        raise DltrainError(
            "--resume continues a run in its own folder with its saved config; drop CONFIG and "
            "--out (use --set, e.g. --set train.epochs=20, to change values)"
        )
    from dltrain.training.resume import plan

    todo = plan(target, changes)
    for text in todo.notes:
        note(text)
    if todo.action != "done":
        run(todo.cfg, todo.folder, mode, resume=todo.payload, parent=todo.parent)


@app.command()
@friendly
def finetune(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="YAML config of the new task (its data).")],
    source: Annotated[
        str, typer.Option("--from", help="A dltrain checkpoint, or imagenet (torchvision).")
    ],
    set_: SetOption = None,
    device: DeviceOption = None,
    out_dir: OutOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
    nproc: NprocOption = 1,
) -> None:
    """Train on a new dataset starting from a checkpoint's (or ImageNet) weights."""
    from dltrain.config import load_config

    cfg = load_config(config, overrides(set_, device))
    if nproc > 1:
        _launch(ctx, nproc)
        return
    from dltrain.training.finetune import from_source

    cfg, parent = from_source(cfg, source)
    folder, made = _run_folder(cfg, out_dir, force)
    run(cfg, folder, _mode(quiet, as_json), parent=parent, new=True, made=made)
