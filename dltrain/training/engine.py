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
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dltrain.config import Config
from dltrain.errors import DltrainError, Interrupted
from dltrain.reporting import trackers
from dltrain.reporting.events import (
    Decode,
    EpochEnd,
    EpochStart,
    Listener,
    Note,
    RunEnd,
    RunStart,
    Summary,
)
from dltrain.reporting.runs import RunLock, remove_unused
from dltrain.training import distributed, saving
from dltrain.training.early_stopping import overfitting_note
from dltrain.training.epoch import (
    Channel,
    NonFiniteLoss,
    Progress,
    evaluate,
    train_one_epoch,
)
from dltrain.training.finetune import apply_freeze
from dltrain.training.loop import LoopState
from dltrain.training.runtime import StopSignal
from dltrain.training.session import Session, build
from dltrain.training.summary import finished, run_facts, unfinished


def fit(
    cfg: Config,
    run_dir: Path,
    listeners: Sequence[Listener] = (),
    resume: dict | None = None,
    parent: dict | None = None,
    new: bool = False,
    made: tuple[Path, ...] = (),
) -> Summary:
    """Train per the config, writing config, metrics, summary and checkpoints to `run_dir`;
    returns the summary. `listeners` hear the run and may stop it (the summary then says
    "stopped" and why). `resume`: a checkpoint payload to continue from (same folder, mid-epoch
    too). `parent`: the source of a finetune run (switches on `cfg.finetune`). `new`: the
    folder was chosen as holding no run (runs.new_run_dir), and must still hold none. `made`:
    the folders made for the run (runs.made_run_dir), taken away again if it fails before
    writing more than its config. Raises Interrupted after SIGINT/SIGTERM (a resumable last.pt
    is written first) and DltrainError for a NaN/Inf loss or running out of memory, each
    recorded in summary.json first."""
    main = distributed.is_main()
    # Rank 0 holds the folder's lock from before its first write to the end (runs.RunLock).
    with RunLock(run_dir, new) if main else contextlib.nullcontext():
        try:
            return _fit(cfg, Path(run_dir), list(listeners), resume, parent)
        except BaseException:
            if main:  # e.g. no dataset: no empty run folder for `dltrain runs` to list
                remove_unused(made)
            raise


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

        run = build(cfg, run_dir, parent, resuming=resume is not None, progress=progress)
        loop = _begin(run, emit, resume)
        with StopSignal() as signals:
            emit.signals = signals
            _run(run, loop, emit, started)
        summary = finished(run, loop, emit.decided, time.perf_counter() - started)
        _ended(run, emit, summary)
    finally:
        if main and not emit.ended:  # raised before its end was told: curves all the same
            _draw(run_dir, emit)
        for tracker in tracking:  # however the run ended
            tracker.close()
    return summary


def _ended(run: Session, emit: Channel, summary: Summary) -> None:
    """summary.json written and curves.png drawn, then the run's end told, however it ended."""
    run.files.write_summary(summary.to_dict())
    if distributed.is_main():
        _draw(run.run_dir, emit)
    emit(RunEnd(summary, run.run_dir))


def _draw(run_dir: Path, emit: Channel) -> None:
    """curves.png of the epochs metrics.csv holds; a plotting problem is a note, never a
    failure of the run."""
    from dltrain.reporting.plots import draw_curves  # matplotlib: only once a run ends

    if problem := draw_curves(run_dir):
        emit(Note(problem))


def _begin(run: Session, emit: Channel, resume: dict | None) -> LoopState:
    """The loop's state (restored when resuming), the config written, the start announced."""
    loop = LoopState(trainable=trainable(run.model))
    if resume is not None:
        loop = LoopState(**saving.restore(run, resume), trainable=loop.trainable)
        rows = run.files.read_metrics()
        loop.rows = [row for row in rows if row["epoch"] <= loop.epoch]
        if not loop.rows and resume.get("metrics"):  # a checkpoint gone on in a new folder
            loop.rows = [resume["metrics"]]
        if dropped := [row["epoch"] for row in rows if row["epoch"] > loop.epoch]:
            epochs = f"{dropped[0]}-{dropped[-1]}" if len(dropped) > 1 else f"{dropped[0]}"
            emit(Note(f"metrics.csv: dropped epoch(s) {epochs}, which no checkpoint holds; they "
                      "are trained again"))  # fmt: skip
        run.files.rewrite_metrics(loop.rows)
        run.files.remove_temporary()  # left by a process killed while saving
        where = f"epoch {loop.epoch}"
        if loop.partial:
            where = f"epoch {loop.epoch + 1}, step {loop.partial.steps}"
        emit(Note(f"resuming {run.run_dir} after {where}"))
    else:
        run.files.start_over()
    run.files.write_config(run.cfg)
    run.files.write_parent(run.parent)
    for note in run.notes:
        emit(Note(note))
    epochs, batches = run.cfg.train.epochs, len(run.train_batches)
    emit(RunStart(run.run_dir, run.cfg, epochs, loop.epoch + 1, batches, run_facts(run)))
    return loop


def _run(run: Session, loop: LoopState, emit: Channel, started: float) -> None:
    """The epochs; a NaN/Inf loss, running out of memory or a signal end the run here, each
    recorded in summary.json (and a stop mid-epoch saved in last.pt) before raising."""
    try:
        _epochs(run, loop, emit)
    except NonFiniteLoss as bad:
        saving.flush(run, loop)  # the epochs before it are good
        _fail(run, loop, emit, started, bad.step)
    except torch.cuda.OutOfMemoryError:
        saving.flush(run, loop)
        _fail(run, loop, emit, started)
    except BaseException:  # anything else: the epochs that finished are still written
        saving.flush(run, loop)
        raise
    if loop.partial is not None:  # stopped mid-epoch: resumable from this step
        saving.keep(run, loop, loop.rows[-1] if loop.rows else {}, ["last.pt"], now=True)
    saving.flush(run, loop)  # the run ends or stops: nothing waits in memory any longer
    if emit.decided is not None and emit.decided.signum is not None:
        _interrupted(run, loop, emit, started)


def _epochs(run: Session, loop: LoopState, emit: Channel) -> None:
    cfg, stepped = run.cfg, [run.schedule] + ([run.ema] if run.ema is not None else [])
    while loop.epoch < cfg.train.epochs and not run.stopper.should_stop and not emit.decided:
        epoch_start = time.perf_counter()
        start = _epoch_start(run, loop)
        emit(EpochStart(loop.epoch + 1))
        train = train_one_epoch(
            run.net, run.train_batches, run.optimizer, run.loss_fn, cfg.train,
            precision=run.precision, stepped=stepped, mix=run.mix, emit=emit, start=start,
        )  # fmt: skip
        loop.global_step += train["steps"]
        if "partial" in train:
            loop.partial = train["partial"]
            return
        loop.epoch += 1
        row = _measure(run, loop, train, epoch_start)
        improved = _record(run, loop, row, emit)
        emit.check()  # a signal during validation: this epoch's last.pt is the one to resume
        names = ["last.pt"] if cfg.checkpoint.save_last or emit.decided else []
        names += ["best.pt"] if improved and cfg.checkpoint.save_best else []
        saving.keep(run, loop, row, names, now=emit.decided is not None)
        mixed = run.mix is not None  # the training accuracy is then that of mixed batches
        emit(EpochEnd(row, improved, cfg.train.epochs, mixed))
        emit.check()  # rank 0's caller may have asked to stop: every rank hears it


def _epoch_start(run: Session, loop: LoopState) -> Progress:
    """Where this epoch's training begins, and the one place that knows mid-epoch resume: at
    its first batch, or at the step an interrupted run reached, from the loader's random state
    as that epoch began and with its running sums. A checkpoint of another process count
    counts other batches: its epoch is read again from its start, from the saved weights."""
    partial, loop.partial = loop.partial, None
    generator = run.train_batches.generator
    if partial is not None:
        generator.set_state(partial.loader_rng)
        if partial.world_size != run.world_size:
            partial = None
    run.train_batches.set_epoch(loop.epoch)
    if run.parent is not None:
        apply_freeze(run.model, run.cfg.finetune, loop.epoch + 1)
        # DDP syncs the parameters that trained when it wrapped the model: wrap again.
        if distributed.active() and loop.trainable != trainable(run.model):
            run.net = distributed.wrap(run.eval_net, run.device, run.cfg.train.sync_batchnorm)
            loop.trainable = trainable(run.model)
    here = Progress(loop.epoch + 1, generator.get_state(), world_size=run.world_size)
    return partial or here


def trainable(model: nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in model.parameters())


def _measure(run: Session, loop: LoopState, train: dict, epoch_start: float) -> dict:
    """One epoch's row of metrics.csv: training, validation and the train-val gap. With an EMA,
    the average and the trained weights are both validated (val_*_ema, val_*_raw): val_loss
    and val_acc are those of the better of the two by the monitored metric (`loop.weights`),
    the weights this epoch hands on to early stopping, best.pt and the end of the run."""
    autocast = run.precision.autocast
    val = evaluate(run.eval_net, run.val_batches, autocast=autocast)
    row = {"epoch": loop.epoch, "train_loss": train["loss"], "train_acc": train["acc"]}
    both = {}
    if run.ema is not None:
        raw, average = val, evaluate(run.ema.module, run.val_batches, autocast=autocast)
        metric = run.stopper.monitor.removeprefix("val_")
        loop.weights = "ema" if run.stopper.as_good(average[metric], raw[metric]) else "trained"
        val = average if loop.weights == "ema" else raw
        both = {"val_loss_ema": average["loss"], "val_acc_ema": average["acc"]}
        both.update(val_loss_raw=raw["loss"], val_acc_raw=raw["acc"])
    if run.train_eval_batches is not None:
        # Eval mode on a fixed training subset: dropout and batch norm off, so the gap is honest.
        seen = evaluate(run.validated(loop.weights), run.train_eval_batches, autocast=autocast)
        row.update(train_eval_loss=seen["loss"], train_eval_acc=seen["acc"])
    row.update(val_loss=val["loss"], val_acc=val["acc"], **both)
    if run.train_eval_batches is not None:
        row["gap"] = row["train_eval_acc"] - val["acc"]
    row["lr"] = run.optimizer.param_groups[0]["lr"]
    row["seconds"] = time.perf_counter() - epoch_start
    return row


def _record(run: Session, loop: LoopState, row: dict, emit: Channel) -> bool:
    """Steps an epoch schedule, notes overfitting, logs, appends to metrics.csv and lets early
    stopping judge (once, on rank 0, sent to all); returns whether the epoch is the best."""
    run.schedule.after_epoch(row)
    loop.rows.append(row)
    note = "" if loop.overfitting else overfitting_note(loop.rows)
    if note:
        loop.overfitting = note
        emit(Note(note))
    improved, state = distributed.from_main(
        lambda: (run.stopper.step(row[run.stopper.monitor], loop.epoch), run.stopper.state_dict())
    )
    run.stopper.load_state_dict(state)
    run.files.append_metrics(row)
    if improved:
        loop.best_weights = copy.deepcopy(run.state(loop.weights))
    return improved


def _interrupted(run: Session, loop: LoopState, emit: Channel, started: float) -> None:
    """Record where a signal stopped training (last.pt is saved) and raise Interrupted."""
    signum = emit.decided.signum
    if loop.partial is not None:
        where = f"epoch {loop.partial.epoch}, step {loop.partial.steps}"
    else:
        where = f"the end of epoch {loop.epoch}"
    reason = f"stopped by {signal.Signals(signum).name} at {where}"
    _ended(run, emit, unfinished(run, loop, "interrupted", reason, time.perf_counter() - started))
    nproc = f" --nproc {run.world_size}" if run.world_size > 1 else ""
    raise Interrupted(
        f"{reason}; saved {run.run_dir / 'last.pt'}; resume with: dltrain train --resume "
        f"{run.run_dir}{nproc}",
        128 + signum,
    )


def _fail(run: Session, loop: LoopState, emit: Channel, started: float, step: int | None = None):
    """Record why training failed and raise it: a NaN/Inf loss at `step` (agreed by all ranks)
    or, without a step, the device running out of memory (this rank alone)."""
    epoch, size = loop.epoch, run.cfg.data.batch_size
    if step is not None:
        kept = f"checkpoints hold epoch {epoch}" if epoch else "no checkpoint was written"
        reason = (
            f"loss became NaN/Inf at epoch {epoch + 1}, step {step}; training stopped and "
            f"{kept} (no NaN weights saved): lower optim.lr (now {run.cfg.optim.lr:g}) or set "
            "train.grad_clip, e.g. --set train.grad_clip=1.0"
        )
    else:
        kept = f"checkpoints up to epoch {epoch} are intact" if epoch else "nothing was saved"
        reason = (
            f"{run.device} ran out of memory in epoch {epoch + 1} with data.batch_size={size}; "
            f"try --set data.batch_size={max(1, size // 2)} (train.accumulate keeps the "
            f"effective batch); {kept}"
        )
    _ended(run, emit, unfinished(run, loop, "failed", reason, time.perf_counter() - started))
    err = DltrainError(reason)
    err.all_ranks = step is not None
    raise err
