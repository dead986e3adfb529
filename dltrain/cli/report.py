"""The live report of a training run, a listener of its typed events: on a terminal a status
line from the first moment, then one bar per epoch (running loss and accuracy, samples/s, the
epoch's and the whole run's time left) with notes and epoch lines printed above it, never into
it; elsewhere one line per epoch. `quiet` shows notes and the summary only, `json` one object
at the end."""

from __future__ import annotations

import json
import statistics
import time

from rich.console import Console
from rich.table import Column, Table

from dltrain.cli.app import note, say
from dltrain.reporting import events

REFRESH = 0.2  # seconds between bar updates: enough for a person, and reading the loss syncs
SMOOTHING = 0.3  # weight of the newest reading in the bar's running loss and accuracy


def per_class(counts: dict[str, int], shown: int = 20) -> str:
    """A class histogram in one line: each class's count up to `shown` classes, else a range."""
    if len(counts) <= shown:
        return ", ".join(f"{name} {count:,}" for name, count in counts.items())
    values = counts.values()
    return f"{len(counts)} classes, {min(values):,}-{max(values):,} each"


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainReport:
    """engine.fit's listener; it never asks to stop."""

    def __init__(self, console: Console, mode: str = "normal"):
        self.console, self.mode = console, mode
        self.live = console.is_terminal and mode == "normal"
        self.bar, self.status, self.last_refresh = None, None, 0.0
        self.epoch_seconds: list[float] = []
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

    def begin(self) -> None:
        """Something on screen at once: torch's import and the data take seconds."""
        if self.live:
            self.status = self.console.status("starting: loading the data, building the model")
            self.status.start()

    def _settled(self) -> None:
        """The starting status gives way to what comes next."""
        if self.status is not None:
            self.status.stop()
            self.status = None

    def note(self, event: events.Note) -> None:
        if self.bar is None and self.status is None:
            note(event.text)
            return
        # Through the live display's console: printed above it, and the display redrawn.
        self.console.print(f"note: {event.text}", style="yellow", markup=False, soft_wrap=True)

    def decode(self, event: events.Decode) -> None:
        """An image folder decoded into memory before training: a bar with an ETA."""
        if not self.live:
            return
        self._settled()
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

        self._settled()
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

            # Fixed widths: the layout does not move when the figures first appear.
            self.bar = progress.Progress(
                progress.TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                progress.BarColumn(bar_width=30),
                progress.MofNCompleteColumn(),
                progress.TextColumn("{task.fields[stats]}", table_column=Column(width=30)),
                progress.TextColumn("{task.fields[rate]}", table_column=Column(width=16)),
                progress.TimeRemainingColumn(),
                progress.TextColumn("{task.fields[run]}", table_column=Column(width=16)),
                console=self.console,
                refresh_per_second=4,
                transient=True,
            )
            self.bar.start()

    def epoch_start(self, event: events.EpochStart) -> None:
        self.epoch_started, self.epoch_now = time.perf_counter(), event.epoch
        self.loss = self.acc = None
        if self.bar is not None:
            fields = {"stats": "", "rate": "", "run": ""}
            self.task = self.bar.add_task(
                "", total=self.batches, epoch=event.epoch, epochs=self.epochs, **fields
            )

    def batch(self, event: events.BatchEnd) -> None:
        now = time.perf_counter()
        # A few refreshes a second are enough for a human; more would slow short steps.
        if self.bar is None or now - self.last_refresh < REFRESH:
            return
        self.last_refresh = now
        elapsed = max(now - self.epoch_started, 1e-9)
        self._running(event)
        stats = f"loss {self.loss:.4f}" + (f"  acc {self.acc:.3f}" if self.acc is not None else "")
        # The run's time left: this epoch's rest, then the others at the epochs' mean so far.
        epoch = statistics.fmean(self.epoch_seconds) if self.epoch_seconds else None
        epoch = epoch or elapsed / event.step * self.batches
        left = max(epoch - elapsed, 0.0) + epoch * (self.epochs - self.epoch_now)
        self.bar.update(
            self.task,
            completed=event.step,
            stats=stats,
            rate=f"{event.seen / elapsed:,.0f} samples/s",
            run=f"run {clock(left)} left",
            refresh=True,  # drawn now: an epoch may end before the display's own next redraw
        )

    def _running(self, event: events.BatchEnd) -> None:
        """The bar's loss and accuracy: the batches read at refreshes, smoothed (reading them
        waits for the device, so only a few times a second)."""
        loss = float(event.loss)
        acc = None
        if event.logits is not None:
            acc = (event.logits.argmax(1) == event.labels).float().mean().item()
        if self.loss is None:
            self.loss, self.acc = loss, acc
            return
        self.loss += SMOOTHING * (loss - self.loss)
        if acc is not None and self.acc is not None:
            self.acc += SMOOTHING * (acc - self.acc)

    def epoch(self, event: events.EpochEnd) -> None:
        row = event.row
        self.epoch_seconds.append(row["seconds"])
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
        self._settled()
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
        table = Table(title="summary", show_header=False)
        for name, value in _summary_rows(summary, event):
            if value:
                table.add_row(name, value)
        self.console.print(table)
        if summary.stop_reason:
            say(summary.stop_reason, self.console)


def _summary_rows(summary: events.Summary, event: events.RunEnd) -> list[tuple[str, str]]:
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
    return rows + [
        ("overfitting", summary.overfitting),
        ("best.pt holds", _best_holds(summary)),
        ("final val accuracy", f"{summary.final_val['acc']:.4f} ({restored})"),
        ("seconds per epoch", f"{summary.seconds_per_epoch:.2f}"),
        ("run folder", str(event.run_dir)),
    ]


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
