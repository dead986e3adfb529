"""The training loop: `train_one_epoch`, `evaluate` and `fit`, plain functions returning dicts.

The engine never prints: it reports through `progress(event, info)`, which the CLI turns
into a progress bar, log lines and tables. What a run holds (model, optimizer, loaders, ...)
is built in session.py.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dltrain import __version__, distributed
from dltrain.config import Config, TrainConfig
from dltrain.early_stopping import overfitting_note
from dltrain.errors import DltrainError, Interrupted
from dltrain.finetune import apply_freeze
from dltrain.models import count_parameters
from dltrain.runs import RunFiles, TensorBoard
from dltrain.runtime import StopSignal
from dltrain.session import Session, build, trainable
from dltrain.session import resume as resume_session

Progress = Callable[[str, dict], None]


def _quiet(event: str, info: dict) -> None:
    pass


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except that BatchNorm layers whose parameters are all frozen stay in eval
    mode, so a frozen backbone's running statistics do not drift."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()


@dataclass
class Loop:
    """How one training epoch runs: precision tools, and callbacks for the caller."""

    autocast: Callable = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    on_step: Callable[[], None] | None = None  # after every optimizer step
    on_batch: Callable[[int, int], None] | None = None  # (step, samples seen)
    should_stop: Callable[[], bool] | None = None  # checked after every optimizer step
    # Distributed: (first NaN step or None, stop asked) -> the same answer on every rank.
    # Consulted at each tally fold instead of should_stop at every step.
    agree: Callable[[int | None, bool], tuple[int | None, bool]] | None = None


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        self.step = step


NAN_CHECK_EVERY = 16  # steps between host checks of the loss (each check is a device sync)


class _Tally:
    """Each step's loss, logits and labels are kept as they are (no device work per step) and
    folded into the epoch's sums every NAN_CHECK_EVERY steps. The fold is also where a NaN/Inf
    loss is caught, with its exact step: one host sync per window, none per step."""

    def __init__(self, device: torch.device, start: dict):
        self.losses: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.first_step = 0
        zero = torch.zeros((), dtype=torch.float64)
        # non_blocking: a plain CPU-to-CUDA copy would wait for the GPU's queue to drain.
        self.loss_sum = start.get("loss_sum", zero).to(device, torch.float64, non_blocking=True)
        self.correct_sum = start.get("correct", zero.long()).to(
            device, torch.long, non_blocking=True
        )
        self.seen = start.get("seen", 0)

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
        """Record one step; returns True when the window is full."""
        if not self.losses:
            self.first_step = step
        self.losses.append(loss)
        self.logits.append(logits)
        self.labels.append(labels)
        self.sizes.append(len(labels))
        self.seen += len(labels)
        return len(self.losses) == NAN_CHECK_EVERY

    def fold(self) -> int | None:
        """Add the window to the sums; returns the first step with a NaN/Inf loss, if any."""
        if not self.losses:
            return None
        losses = torch.stack(self.losses).double()
        if len(set(self.sizes)) == 1:  # every batch of the window has the same size
            window = losses.sum() * self.sizes[0]
        else:
            window = (
                losses
                * torch.tensor(self.sizes, dtype=torch.float64).to(losses.device, non_blocking=True)
            ).sum()
        # In float64 a sum of finite losses stays finite: one check (the host sync of this
        # window) covers every step; the exact bad step is looked for only when needed.
        if not math.isfinite(window.item()):
            bad = (~torch.isfinite(losses)).nonzero()
            return self.first_step + int(bad[0])
        self.loss_sum += window
        predicted = torch.cat(self.logits).argmax(1)
        self.correct_sum += (predicted == torch.cat(self.labels)).sum()
        self.losses, self.logits, self.labels, self.sizes = [], [], [], []
        return None


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    cfg: TrainConfig,
    loop: Loop | None = None,
    start: dict | None = None,
) -> dict:
    """One pass over the training batches; returns mean loss and accuracy.

    Steps the optimizer every `cfg.accumulate` batches (and after the last one), clipping the
    gradients' norm to `cfg.grad_clip`. When `loop.should_stop()` turns true at an optimizer
    step, returns {"partial": …} instead: the steps done and the running sums, which `start`
    takes to continue the same epoch (its first `steps` batches are drawn and skipped, so the
    loader's random state replays exactly). Raises NonFiniteLoss(step) for a NaN/Inf loss.

    Distributed (`model` wrapped in DDP, `loop.agree` set): gradients are averaged at each
    optimizer step only (no_sync in between), NaN and stop decisions are agreed at each fold,
    and the returned loss and accuracy are sums over all ranks.
    """
    loop = loop or Loop()
    scaler = loop.scaler or torch.amp.GradScaler(enabled=False)
    set_train_mode(model)
    params = [p for p in model.parameters() if p.requires_grad]
    total_batches = len(batches)
    start = start or {}
    skip = start.get("steps", 0)
    # A resumed epoch's running sums are the totals over all ranks: only rank 0 starts with them.
    tally = _Tally(next(model.parameters()).device, start if distributed.rank() == 0 else {})
    asked = loop.should_stop or (lambda: False)
    stopping = False

    def fold() -> bool:
        """Fold the window; raise for a NaN/Inf loss; returns whether to stop (agreed)."""
        bad = tally.fold()
        wants_stop = asked()
        if loop.agree is not None:
            bad, wants_stop = loop.agree(bad, wants_stop)
        if bad is not None:
            raise NonFiniteLoss(bad)
        return wants_stop

    optimizer.zero_grad(set_to_none=True)
    for step, (images, labels) in enumerate(batches, start=1):
        if step <= skip:
            continue
        boundary = step % cfg.accumulate == 0 or step == total_batches
        # DDP averages gradients in backward; between optimizer steps that would be wasted.
        sync = contextlib.nullcontext() if boundary or loop.agree is None else model.no_sync()
        with sync:
            with loop.autocast():
                logits = model(images)
                loss = loss_fn(logits, labels)
            full = tally.add(step, loss.detach(), logits.detach(), labels)
            if cfg.accumulate > 1:
                loss = loss / cfg.accumulate
            scaler.scale(loss).backward()
        if boundary:
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if loop.on_step is not None:
                loop.on_step()
        if full or step == total_batches:
            stopping = fold() or stopping
        if loop.on_batch is not None:
            loop.on_batch(step, tally.seen)
        # One process stops at any optimizer step; several at the first one after agreeing.
        if boundary and step < total_batches and (stopping or (loop.agree is None and asked())):
            fold()
            _sum_tally(tally)
            sums = {"loss_sum": tally.loss_sum.cpu(), "correct": tally.correct_sum.cpu()}
            return {"partial": {"steps": step, "seen": tally.seen, **sums}}
    _sum_tally(tally)
    return {
        "loss": tally.loss_sum.item() / tally.seen,
        "acc": tally.correct_sum.item() / tally.seen,
    }


def _sum_tally(tally: _Tally) -> None:
    """Distributed: the sums and sample count over all ranks (every rank gets them)."""
    if distributed.active():
        distributed.all_sum(tally.loss_sum, tally.correct_sum)
        (tally.seen,) = distributed.sum_ints(tally.seen)


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Iterable, details: bool = False, autocast=contextlib.nullcontext
) -> dict:
    """Mean loss (plain cross-entropy) and accuracy over a whole split, in eval mode.

    With `details`, also top-5 accuracy (when there are more than 5 classes) and the confusion
    matrix (`confusion[true][predicted]` counts) as nested lists. Distributed, each rank reads
    its shard and the sums are added over the ranks: every sample counts exactly once.
    """
    model.eval()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    total_correct = torch.zeros((), dtype=torch.long, device=device)
    total_top5 = torch.zeros((), dtype=torch.long, device=device)
    confusion = None
    seen = 0
    for images, labels in batches:
        with autocast():
            logits = model(images)
        logits = logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
        predicted = logits.argmax(1)
        total_correct += (predicted == labels).sum()
        seen += len(labels)
        if details:
            classes = logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
            confusion += torch.bincount(labels * classes + predicted, minlength=classes**2)
            if classes > 5:
                top5 = logits.topk(5, dim=1).indices
                total_top5 += (top5 == labels[:, None]).any(1).sum()
    if distributed.active():
        distributed.all_sum(total_loss, total_correct, total_top5)
        (seen,) = distributed.sum_ints(seen)
    metrics = {"loss": total_loss.item() / seen, "acc": total_correct.item() / seen}
    if details:
        classes = int(len(confusion) ** 0.5)
        metrics["confusion"] = confusion.view(classes, classes).tolist()
        if classes > 5:
            metrics["top5"] = total_top5.item() / seen
    return metrics


def fit(
    cfg: Config,
    run_dir: Path,
    progress: Progress = _quiet,
    resume: dict | None = None,
    parent: dict | None = None,
    on_epoch: Callable[[dict], str | None] | None = None,
) -> dict:
    """Train per the config, writing config, metrics, summary and checkpoints to `run_dir`.

    `resume`: a checkpoint payload to continue from (same run folder, mid-epoch too).
    `parent`: the source a finetune run starts from; it switches on `cfg.finetune` (freezing,
    head learning rate). `on_epoch(row)` is called after each epoch's checkpoints are saved;
    a non-empty string it returns ends training there, as the run's stop reason (a sweep's
    pruner uses it). Raises Interrupted after SIGINT/SIGTERM (a resumable last.pt is
    written first) and DltrainError for a NaN/Inf loss or CUDA running out of memory.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    writes = distributed.is_main()  # distributed: rank 0 alone reports and writes
    if not writes:
        progress = _quiet
    # Asked-for logging that cannot work is an error before any data is read.
    tensorboard = TensorBoard(run_dir, cfg) if cfg.logging.tensorboard and writes else None
    if resume is not None:
        parent = resume.get("parent")
    s = build(cfg, run_dir, parent, resuming=resume is not None)
    s.tensorboard = tensorboard
    s.on_epoch = on_epoch
    files = RunFiles(run_dir, write=writes)
    partial = None
    if resume is not None:
        partial = resume_session(s, resume, files)
        where = f"epoch {s.epoch + 1}, step {partial['steps']}" if partial else f"epoch {s.epoch}"
        progress("note", {"text": f"resuming {run_dir} after {where}"})
    files.write_config(cfg)
    for note in s.splits.notes:
        progress("note", {"text": note})
    progress(
        "start",
        {
            "run_dir": str(run_dir),
            "device": str(s.device),
            "processes": distributed.world_size(),
            "params": count_parameters(s.model),
            "epochs": cfg.train.epochs,
            "batches": len(s.train_batches),
            "sizes": s.splits.sizes,
            "precision": s.precision,
        },
    )
    try:
        with StopSignal() as stop:
            try:
                _epochs(s, files, progress, stop, partial)
            except NonFiniteLoss as bad:
                _fail(s, files, _nan_message(s, bad.step), started, all_ranks=True)
            except torch.cuda.OutOfMemoryError:
                _fail(s, files, _oom_message(s), started)
            if s.stopping:
                _interrupted(s, files, stop.signum or signal.SIGTERM, started)
        summary = _finish(s, time.perf_counter() - started)
        files.write_summary(summary)
    finally:
        if tensorboard is not None:
            tensorboard.close()
        if writes:
            _draw_curves(run_dir, progress)
    progress("end", {"summary": summary, "run_dir": str(run_dir), "model": s.model})
    return summary


def _draw_curves(run_dir: Path, progress: Progress) -> None:
    """curves.png for whatever metrics exist; a plotting problem never fails a run."""
    if not (run_dir / "metrics.csv").exists():
        return
    from dltrain.plots import plot_run

    try:
        plot_run(run_dir)
    except Exception as err:  # noqa: BLE001 - the run itself is saved; say so and go on
        progress("note", {"text": f"could not draw {run_dir / 'curves.png'}: {err}"})


def _epochs(s: Session, files: RunFiles, progress: Progress, stop: StopSignal, partial) -> None:
    cfg = s.cfg
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)

    def on_step() -> None:
        s.global_step += 1
        s.schedule.after_step()

    loop = Loop(
        s.autocast,
        s.scaler,
        on_step,
        lambda step, seen: progress("batch", {"step": step, "seen": seen}),
        stop,
        distributed.agree if distributed.active() else None,
    )

    def stop_agreed() -> bool:  # a signal reaches the ranks at different moments
        return distributed.agree(None, stop())[1]

    s.stopping = stop_agreed()
    while s.epoch < cfg.train.epochs and not s.stopper.should_stop and not s.halted:
        if s.stopping:
            return
        epoch_start = time.perf_counter()
        if partial is not None:  # continue an epoch that was interrupted
            s.train_batches.generator.set_state(partial["loader_rng"])
        epoch_rng = s.train_batches.generator.get_state()
        s.train_batches.set_epoch(s.epoch)
        if s.parent is not None:
            apply_freeze(s.model, cfg.finetune, s.epoch + 1)
            # DDP syncs the parameters that trained when it wrapped the model: wrap again.
            if distributed.active() and s.trainable != trainable(s.model):
                s.net = distributed.wrap(s.eval_net, s.device, cfg.train.sync_batchnorm)
                s.trainable = trainable(s.model)
        progress("epoch_start", {"epoch": s.epoch + 1})
        train = train_one_epoch(
            s.net, s.train_batches, s.optimizer, loss_fn, cfg.train, loop, partial
        )
        partial = None
        if "partial" in train:
            s.partial = {**train["partial"], "epoch": s.epoch + 1, "loader_rng": epoch_rng}
            s.stopping = True
            return
        s.epoch += 1
        row = _measure(s, train, epoch_start)
        s.schedule.after_epoch(row)
        s.rows.append(row)
        note = "" if s.overfitting else overfitting_note(s.rows)
        if note:
            s.overfitting = note
            progress("note", {"text": note})
        if s.tensorboard is not None:
            s.tensorboard.log(row)
        # Decided once, on rank 0, and sent to all: every rank stops at the same epoch.
        improved, state = distributed.from_main(
            lambda r=row: (s.stopper.step(r[s.stopper.monitor], s.epoch), s.stopper.state_dict())
        )
        s.stopper.load_state_dict(state)
        files.append_metrics(row)
        if improved:
            s.best_weights = copy.deepcopy(s.model.state_dict())
        s.stopping = stop_agreed()
        # One write when the epoch is both the last and the best: best.pt links to last.pt.
        names = ["last.pt"] if cfg.checkpoint.save_last or s.stopping else []
        names += ["best.pt"] if improved and cfg.checkpoint.save_best else []
        if names:
            s.save(s.payload(row), *names)
        progress("epoch", {"row": row, "improved": improved, "epochs": cfg.train.epochs})
        if s.on_epoch is not None:
            s.halted = distributed.from_main(lambda r=row: s.on_epoch(r) or "")


def _measure(s: Session, train: dict, epoch_start: float) -> dict:
    """One epoch's row of metrics.csv: training, validation and the train-val gap."""
    val = evaluate(s.eval_net, s.val_batches, autocast=s.autocast)
    row = {"epoch": s.epoch, "train_loss": train["loss"], "train_acc": train["acc"]}
    if s.train_eval_batches is not None:
        # Eval mode on a fixed training subset: dropout and batch norm off, so the gap is honest.
        seen = evaluate(s.eval_net, s.train_eval_batches, autocast=s.autocast)
        row.update(train_eval_loss=seen["loss"], train_eval_acc=seen["acc"])
    row.update(val_loss=val["loss"], val_acc=val["acc"])
    if s.train_eval_batches is not None:
        row["gap"] = row["train_eval_acc"] - val["acc"]
    row["lr"] = s.optimizer.param_groups[0]["lr"]
    row["seconds"] = time.perf_counter() - epoch_start
    return row


def _interrupted(s: Session, files: RunFiles, signum: int, started: float) -> None:
    """Save where training stopped (mid-epoch too), record it, raise Interrupted."""
    if s.partial is not None:
        s.save(s.payload(s.rows[-1] if s.rows else {}), "last.pt")
        where = f"epoch {s.partial['epoch']}, step {s.partial['steps']}"
    else:
        where = f"the end of epoch {s.epoch}"
    name = signal.Signals(signum).name
    reason = f"interrupted by {name} at {where}"
    files.write_summary(_status(s, "interrupted", reason, time.perf_counter() - started))
    raise Interrupted(
        f"{reason}; saved {s.run_dir / 'last.pt'}; resume with: dltrain train --resume "
        f"{s.run_dir}" + (f" --nproc {distributed.world_size()}" if distributed.active() else ""),
        128 + signum,
    )


def _fail(s: Session, files: RunFiles, reason: str, started: float, all_ranks=False) -> None:
    files.write_summary(_status(s, "failed", reason, time.perf_counter() - started))
    err = DltrainError(reason)
    err.all_ranks = all_ranks  # a NaN is agreed by all ranks; running out of memory is not
    raise err


def _nan_message(s: Session, step: int) -> str:
    kept = f"checkpoints hold epoch {s.epoch}" if s.epoch else "no checkpoint was written"
    return (
        f"loss became NaN/Inf at epoch {s.epoch + 1}, step {step}; training stopped and {kept} "
        f"(no NaN weights saved): lower optim.lr (now {s.cfg.optim.lr:g}) or set "
        "train.grad_clip, e.g. --set train.grad_clip=1.0"
    )


def _oom_message(s: Session) -> str:
    size = s.cfg.data.batch_size
    kept = f"checkpoints up to epoch {s.epoch} are intact" if s.epoch else "nothing was saved"
    return (
        f"{s.device} ran out of memory in epoch {s.epoch + 1} with data.batch_size={size}; "
        f"try --set data.batch_size={max(1, size // 2)} (train.accumulate keeps the effective "
        f"batch); {kept}"
    )


def _status(s: Session, status: str, reason: str, seconds: float) -> dict:
    """The summary of a run that did not finish."""
    return {
        "name": s.cfg.name,
        "status": status,
        "stop_reason": reason,
        "epochs_run": len(s.rows),
        "monitor": s.stopper.monitor,
        "best_epoch": s.stopper.best_epoch,
        "best_value": s.stopper.best,
        "best_metrics": next((r for r in s.rows if r["epoch"] == s.stopper.best_epoch), None),
        "params": count_parameters(s.model),
        "device": str(s.device),
        "precision": s.precision,
        "sizes": s.splits.sizes,
        "seconds": seconds,
        "parent": s.parent,
        "version": __version__,
    }


def _finish(s: Session, seconds: float) -> dict:
    restored = False
    if s.cfg.train.early_stopping.restore_best and s.best_weights is not None:
        s.model.load_state_dict(s.best_weights)
        restored = s.stopper.best_epoch != s.rows[-1]["epoch"]
    # The model training hands over (restored or last), measured once more on validation.
    final = evaluate(s.eval_net, s.val_batches, autocast=s.autocast)
    reason = s.stopper.reason + (" (restored)" if s.stopper.reason and restored else "")
    status = "stopped_early" if s.stopper.should_stop else "finished"
    if s.halted:
        status, reason = "stopped", s.halted
    return {
        **_status(s, status, reason, seconds),
        "restored_best": restored,
        "final_val": {"loss": final["loss"], "acc": final["acc"]},
        "trainable_params": sum(p.numel() for p in s.model.parameters() if p.requires_grad),
        "seconds_per_epoch": sum(r["seconds"] for r in s.rows) / len(s.rows),
    }
