"""The training loop: `fit` runs a Session (session.py) epoch by epoch, with one epoch's
`train_one_epoch` and `evaluate` from epoch.py; saving.py checkpoints and restores it.

The engine never prints; it draws one thing, the run's curves.png, as the run ends (before
RunEnd, so that trackers can keep a copy). It publishes typed events (events.py) to a list of
listeners: the caller's (`fit(..., listeners=[...])`: the CLI's report, a sweep's pruner)
and the trackers the config asks for (trackers/); a non-empty string a listener returns asks
training to stop, with that reason. Ctrl-C and SIGTERM come in the same way. A stop takes
effect at the next optimizer step (mid-epoch, a resumable last.pt is written) or at the end of
the epoch it was asked at.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dltrain import __version__
from dltrain.config import Config
from dltrain.errors import DltrainError, Interrupted
from dltrain.models import count_parameters
from dltrain.reporting import trackers
from dltrain.reporting.events import (
    Decode,
    EpochEnd,
    EpochStart,
    Facts,
    Listener,
    Note,
    RunEnd,
    RunStart,
    Summary,
)
from dltrain.reporting.runs import RunLock
from dltrain.training import distributed, saving
from dltrain.training.early_stopping import overfitting_note
from dltrain.training.epoch import Channel, NonFiniteLoss, Stop, evaluate, train_one_epoch
from dltrain.training.finetune import apply_freeze
from dltrain.training.runtime import StopSignal
from dltrain.training.session import Session, build, class_counts


@dataclass
class LoopState:
    """Where a run is: what the loop changes as it goes, and what a checkpoint keeps of it."""

    epoch: int = 0  # epochs finished
    global_step: int = 0  # optimizer steps taken
    partial: dict | None = None  # an interrupted epoch: steps done, running sums, loader state
    best_weights: dict | None = None
    weights: str | None = None  # with an EMA: which weights the last epoch validated better
    rows: list[dict] = field(default_factory=list)  # metrics.csv
    overfitting: str = ""  # the note, once given
    trainable: tuple = ()  # which parameters required gradients when DDP last wrapped the model
    pending: dict = field(default_factory=dict)  # checkpoints kept in memory, by file name
    written: float = field(default_factory=time.perf_counter)  # when checkpoints were written


def fit(
    cfg: Config,
    run_dir: Path,
    listeners: Sequence[Listener] = (),
    resume: dict | None = None,
    parent: dict | None = None,
    new: bool = False,
) -> Summary:
    """Train per the config, writing config, metrics, summary and checkpoints to `run_dir`;
    returns the summary. `listeners` hear the run and may stop it (the summary then says
    "stopped" and why). `resume`: a checkpoint payload to continue from (same folder, mid-epoch
    too). `parent`: the source of a finetune run (switches on `cfg.finetune`). `new`: the
    folder was chosen as holding no run (runs.new_run_dir), and must still hold none. Raises
    Interrupted after SIGINT/SIGTERM (a resumable last.pt is written first) and DltrainError
    for a NaN/Inf loss or running out of memory, each recorded in summary.json first."""
    # Rank 0 holds the folder's lock from before its first write to the end (runs.RunLock).
    with RunLock(run_dir, new) if distributed.is_main() else contextlib.nullcontext():
        return _fit(cfg, Path(run_dir), list(listeners), resume, parent)


def _fit(cfg: Config, run_dir: Path, listeners: list, resume: dict | None, parent: dict | None):
    started = time.perf_counter()
    if resume is not None:
        parent = resume.get("parent")
    main = distributed.is_main()  # rank 0 alone reports, draws and tracks
    # Asked-for trackers that cannot work are an error before any data is read; one that
    # fails later says so in a note (emit exists by the time any tracker speaks).
    tracking = trackers.build(cfg, run_dir, warn=lambda text: emit(Note(text))) if main else []
    emit = Channel([*listeners, *tracking] if main else [])
    try:

        def progress(done: int, total: int, split: str) -> None:  # an image folder's decode
            emit(Decode(split, done, total))

        s = build(cfg, run_dir, parent, resuming=resume is not None, progress=progress)
        loop = _begin(s, emit, resume)
        with StopSignal() as signals:
            emit.signals = signals
            _run(s, loop, emit, started)
        summary = _finish(s, loop, emit.decided, time.perf_counter() - started)
        _ended(s, emit, summary)
    finally:
        if main and not emit.ended:  # raised before its end was told: curves all the same
            _draw(run_dir, emit)
        for tracker in tracking:  # however the run ended
            tracker.close()
    return summary


def _ended(s: Session, emit: Channel, summary: Summary) -> None:
    """summary.json written and curves.png drawn, then the run's end told, however it ended."""
    s.files.write_summary(summary.to_dict())
    if distributed.is_main():
        _draw(s.run_dir, emit)
    emit(RunEnd(summary, s.run_dir))


def _draw(run_dir: Path, emit: Channel) -> None:
    """curves.png of the epochs metrics.csv holds; a plotting problem is a note, never a
    failure of the run."""
    from dltrain.reporting.plots import draw_curves  # matplotlib: only once a run ends

    if problem := draw_curves(run_dir):
        emit(Note(problem))


def _begin(s: Session, emit: Channel, resume: dict | None) -> LoopState:
    """The loop's state (restored when resuming), the config written, the start announced."""
    loop = LoopState(trainable=trainable(s.model))
    if resume is not None:
        loop = LoopState(**saving.restore(s, resume), trainable=loop.trainable)
        rows = s.files.read_metrics()
        loop.rows = [row for row in rows if row["epoch"] <= loop.epoch]
        if not loop.rows and resume.get("metrics"):  # a checkpoint gone on in a new folder
            loop.rows = [resume["metrics"]]
        if dropped := [row["epoch"] for row in rows if row["epoch"] > loop.epoch]:
            epochs = f"{dropped[0]}-{dropped[-1]}" if len(dropped) > 1 else f"{dropped[0]}"
            emit(Note(f"metrics.csv: dropped epoch(s) {epochs}, which no checkpoint holds; they "
                      "are trained again"))  # fmt: skip
        s.files.rewrite_metrics(loop.rows)
        s.files.remove_temporary()  # left by a process killed while saving
        where = f"epoch {loop.epoch}"
        if loop.partial:
            where = f"epoch {loop.epoch + 1}, step {loop.partial['steps']}"
        emit(Note(f"resuming {s.run_dir} after {where}"))
    else:
        s.files.start_over()
    s.files.write_config(s.cfg)
    s.files.write_parent(s.parent)
    for note in s.notes:
        emit(Note(note))
    epochs, batches = s.cfg.train.epochs, len(s.train_batches)
    emit(RunStart(s.run_dir, s.cfg, epochs, loop.epoch + 1, batches, _facts(s)))
    return loop


def _facts(s: Session) -> Facts:
    """What the start line and the summary say about the run's setup."""
    return Facts(
        params=count_parameters(s.model),
        macs=s.macs,
        device=str(s.device),
        processes=s.world_size,
        precision=s.precision.name,
        sizes=s.splits.sizes,
        input=[s.info.channels, *s.info.image_size],
        input_from=s.input_from,
        class_counts=class_counts(s.splits),
    )


def _run(s: Session, loop: LoopState, emit: Channel, started: float) -> None:
    """The epochs; a NaN/Inf loss, running out of memory or a signal end the run here, each
    recorded in summary.json (and a stop mid-epoch saved in last.pt) before raising."""
    try:
        _epochs(s, loop, emit)
    except NonFiniteLoss as bad:
        saving.flush(s, loop)  # the epochs before it are good
        _fail(s, loop, emit, started, bad.step)
    except torch.cuda.OutOfMemoryError:
        saving.flush(s, loop)
        _fail(s, loop, emit, started)
    except BaseException:  # anything else: the epochs that finished are still written
        saving.flush(s, loop)
        raise
    if loop.partial is not None:  # stopped mid-epoch: resumable from this step
        saving.keep(s, loop, loop.rows[-1] if loop.rows else {}, ["last.pt"], now=True)
    saving.flush(s, loop)  # the run ends or stops: nothing waits in memory any longer
    if emit.decided is not None and emit.decided.signum is not None:
        _interrupted(s, loop, emit, started)


def _epochs(s: Session, loop: LoopState, emit: Channel) -> None:
    cfg, stepped = s.cfg, [s.schedule] + ([s.ema] if s.ema is not None else [])
    while loop.epoch < cfg.train.epochs and not s.stopper.should_stop and not emit.decided:
        epoch_start = time.perf_counter()
        start = _epoch_start(s, loop)
        emit(EpochStart(loop.epoch + 1))
        train = train_one_epoch(
            s.net, s.train_batches, s.optimizer, s.loss_fn, cfg.train, precision=s.precision,
            stepped=stepped, mix=s.mix, emit=emit, start=start,
        )  # fmt: skip
        loop.global_step += train["steps"]
        if "partial" in train:
            loop.partial = {**train["partial"], "epoch": loop.epoch + 1}
            loop.partial["loader_rng"] = start["loader_rng"]
            return
        loop.epoch += 1
        row = _measure(s, loop, train, epoch_start)
        improved = _record(s, loop, row, emit)
        emit.check()  # a signal during validation: this epoch's last.pt is the one to resume
        names = ["last.pt"] if cfg.checkpoint.save_last or emit.decided else []
        names += ["best.pt"] if improved and cfg.checkpoint.save_best else []
        saving.keep(s, loop, row, names, now=emit.decided is not None)
        mixed = s.mix is not None  # the training accuracy is then that of mixed batches
        emit(EpochEnd(row, improved, cfg.train.epochs, mixed))
        emit.check()  # rank 0's caller may have asked to stop: every rank hears it


def _epoch_start(s: Session, loop: LoopState) -> dict:
    """Where this epoch's training begins, and the one place that knows mid-epoch resume: at
    its first batch, or at the step an interrupted run reached, from the loader's random state
    as that epoch began and with its running sums. A checkpoint of another process count
    counts other batches: its epoch is read again from its start, from the saved weights."""
    partial, loop.partial = loop.partial, None
    generator = s.train_batches.generator
    if partial is not None:
        generator.set_state(partial["loader_rng"])
        if partial["world_size"] != s.world_size:
            partial = None
    s.train_batches.set_epoch(loop.epoch)
    if s.parent is not None:
        apply_freeze(s.model, s.cfg.finetune, loop.epoch + 1)
        # DDP syncs the parameters that trained when it wrapped the model: wrap again.
        if distributed.active() and loop.trainable != trainable(s.model):
            s.net = distributed.wrap(s.eval_net, s.device, s.cfg.train.sync_batchnorm)
            loop.trainable = trainable(s.model)
    return {**(partial or {}), "epoch": loop.epoch + 1, "loader_rng": generator.get_state()}


def trainable(model: nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in model.parameters())


def _measure(s: Session, loop: LoopState, train: dict, epoch_start: float) -> dict:
    """One epoch's row of metrics.csv: training, validation and the train-val gap. With an EMA,
    the average and the trained weights are both validated (val_*_ema, val_*_raw): val_loss
    and val_acc are those of the better of the two by the monitored metric (`loop.weights`),
    the weights this epoch hands on to early stopping, best.pt and the end of the run."""
    autocast = s.precision.autocast
    val = evaluate(s.eval_net, s.val_batches, autocast=autocast)
    row = {"epoch": loop.epoch, "train_loss": train["loss"], "train_acc": train["acc"]}
    both = {}
    if s.ema is not None:
        raw, average = val, evaluate(s.ema.module, s.val_batches, autocast=autocast)
        metric = s.stopper.monitor.removeprefix("val_")
        loop.weights = "ema" if s.stopper.as_good(average[metric], raw[metric]) else "trained"
        val = average if loop.weights == "ema" else raw
        both = {"val_loss_ema": average["loss"], "val_acc_ema": average["acc"]}
        both.update(val_loss_raw=raw["loss"], val_acc_raw=raw["acc"])
    if s.train_eval_batches is not None:
        # Eval mode on a fixed training subset: dropout and batch norm off, so the gap is honest.
        seen = evaluate(s.validated(loop.weights), s.train_eval_batches, autocast=autocast)
        row.update(train_eval_loss=seen["loss"], train_eval_acc=seen["acc"])
    row.update(val_loss=val["loss"], val_acc=val["acc"], **both)
    if s.train_eval_batches is not None:
        row["gap"] = row["train_eval_acc"] - val["acc"]
    row["lr"] = s.optimizer.param_groups[0]["lr"]
    row["seconds"] = time.perf_counter() - epoch_start
    return row


def picked(row: dict) -> str | None:
    """Which weights an epoch's val_loss and val_acc are of: "ema", "trained", or None (a run
    without an EMA). Read off the row itself (the figures are copies), so metrics.csv holds
    the fact once; when both validated the same, the EMA is the one taken."""
    if "val_acc_ema" not in row:
        return None
    same = row["val_loss"] == row["val_loss_ema"] and row["val_acc"] == row["val_acc_ema"]
    return "ema" if same else "trained"


def _record(s: Session, loop: LoopState, row: dict, emit: Channel) -> bool:
    """Steps an epoch schedule, notes overfitting, logs, appends to metrics.csv and lets early
    stopping judge (once, on rank 0, sent to all); returns whether the epoch is the best."""
    s.schedule.after_epoch(row)
    loop.rows.append(row)
    note = "" if loop.overfitting else overfitting_note(loop.rows)
    if note:
        loop.overfitting = note
        emit(Note(note))
    improved, state = distributed.from_main(
        lambda: (s.stopper.step(row[s.stopper.monitor], loop.epoch), s.stopper.state_dict())
    )
    s.stopper.load_state_dict(state)
    s.files.append_metrics(row)
    if improved:
        loop.best_weights = copy.deepcopy(s.state(loop.weights))
    return improved


def _interrupted(s: Session, loop: LoopState, emit: Channel, started: float) -> None:
    """Record where a signal stopped training (last.pt is saved) and raise Interrupted."""
    signum = emit.decided.signum
    if loop.partial is not None:
        where = f"epoch {loop.partial['epoch']}, step {loop.partial['steps']}"
    else:
        where = f"the end of epoch {loop.epoch}"
    reason = f"interrupted by {signal.Signals(signum).name} at {where}"
    _ended(s, emit, _status(s, loop, "interrupted", reason, time.perf_counter() - started))
    nproc = f" --nproc {s.world_size}" if s.world_size > 1 else ""
    raise Interrupted(
        f"{reason}; saved {s.run_dir / 'last.pt'}; resume with: dltrain train --resume "
        f"{s.run_dir}{nproc}",
        128 + signum,
    )


def _fail(s: Session, loop: LoopState, emit: Channel, started: float, step: int | None = None):
    """Record why training failed and raise it: a NaN/Inf loss at `step` (agreed by all ranks)
    or, without a step, the device running out of memory (this rank alone)."""
    epoch, size = loop.epoch, s.cfg.data.batch_size
    if step is not None:
        kept = f"checkpoints hold epoch {epoch}" if epoch else "no checkpoint was written"
        reason = (
            f"loss became NaN/Inf at epoch {epoch + 1}, step {step}; training stopped and "
            f"{kept} (no NaN weights saved): lower optim.lr (now {s.cfg.optim.lr:g}) or set "
            "train.grad_clip, e.g. --set train.grad_clip=1.0"
        )
    else:
        kept = f"checkpoints up to epoch {epoch} are intact" if epoch else "nothing was saved"
        reason = (
            f"{s.device} ran out of memory in epoch {epoch + 1} with data.batch_size={size}; "
            f"try --set data.batch_size={max(1, size // 2)} (train.accumulate keeps the "
            f"effective batch); {kept}"
        )
    _ended(s, emit, _status(s, loop, "failed", reason, time.perf_counter() - started))
    err = DltrainError(reason)
    err.all_ranks = step is not None
    raise err


def _status(s: Session, loop: LoopState, status: str, reason: str, seconds: float) -> Summary:
    """The summary of a run that did not finish."""
    best = s.stopper.best_epoch
    return Summary(
        name=s.cfg.name,
        status=status,
        stop_reason=reason,
        epochs_run=len(loop.rows),
        monitor=s.stopper.monitor,
        best_epoch=best,
        best_value=s.stopper.best,
        best_metrics=next((row for row in loop.rows if row["epoch"] == best), None),
        facts=_facts(s),
        seconds=seconds,
        parent=s.parent,
        version=__version__,
    )


def _finish(s: Session, loop: LoopState, stop: Stop | None, seconds: float) -> Summary:
    """The summary of a run that ended: all its epochs, early stopping, or a caller's stop."""
    summary = _status(s, loop, "finished", "", seconds)
    best_row, restored, handed = summary.best_metrics, False, loop.weights
    if s.cfg.train.early_stopping.restore_best and loop.best_weights is not None:
        s.model.load_state_dict(loop.best_weights)
        restored = s.stopper.best_epoch != loop.rows[-1]["epoch"]
        handed = picked(best_row)
    elif loop.weights == "ema":  # the last epoch's better weights: the average
        s.model.load_state_dict(s.ema.module.state_dict())
    # The model training hands over (restored or last), measured once more on validation.
    final = evaluate(s.eval_net, s.val_batches, autocast=s.precision.autocast)
    reason = s.stopper.reason + (" (restored)" if s.stopper.reason and restored else "")
    status = "stopped_early" if s.stopper.should_stop else "finished"
    if stop is not None:
        status, reason = "stopped", stop.reason
    return dataclasses.replace(
        summary,
        status=status,
        stop_reason=reason,
        restored_best=restored,
        ema_decay=s.ema.decay if s.ema is not None else None,
        best_weights=picked(best_row) if best_row else None,
        final_weights=handed,
        overfitting=loop.overfitting or None,  # the note, if training gave it
        final_val={"loss": final["loss"], "acc": final["acc"]},
        trainable_params=sum(p.numel() for p in s.model.parameters() if p.requires_grad),
        seconds_per_epoch=sum(r["seconds"] for r in loop.rows) / max(1, len(loop.rows)),
    )
