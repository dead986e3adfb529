"""One pass over the data: `train_one_epoch` and `evaluate`, plain functions returning dicts,
and the `Channel` through which the loop talks to its listeners (engine.py's docstring says
how).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dltrain.config import TrainConfig
from dltrain.data import Mixup, tta_views
from dltrain.reporting.events import BatchEnd, Event, Listener, RunEnd
from dltrain.training import distributed
from dltrain.training.runtime import Precision, StopSignal

NAN_CHECK_EVERY = 16  # steps between host checks of the loss (each check is a device sync)


class Stop(NamedTuple):
    reason: str  # a caller's words ("" for a signal: the engine words it)
    signum: int | None = None  # SIGINT/SIGTERM: the run is interrupted and resumable


class Channel:
    """Events go out through `channel(event)` to each listener in turn; a listener's answer (a
    reason) or a signal asks to stop. `decided` is the stop the loop acts on: in one process as
    soon as it is asked; distributed, once `check` has agreed it among the ranks (any rank's
    signal wins over rank 0's listeners), so that every rank stops at the same step."""

    def __init__(self, listeners: Sequence[Listener] = (), signals: StopSignal | None = None):
        self.listeners, self.signals = list(listeners), signals
        self.asked: Stop | None = None
        self.decided: Stop | None = None
        self.single = not distributed.active()
        self.ended = False  # RunEnd has gone out

    def __call__(self, event: Event) -> None:
        self.ended = self.ended or isinstance(event, RunEnd)
        for listener in self.listeners:
            reason = listener(event)
            if self.asked is None and reason:
                self._ask(reason)
        if self.asked is None and self._signum() is not None:
            self._ask(None)

    def _signum(self) -> int | None:
        return None if self.signals is None else self.signals.signum

    def _ask(self, reason: str | None) -> None:
        signum = self._signum()
        self.asked = Stop("", signum) if signum is not None else Stop(reason)
        if self.single:
            self.decided = self.asked

    def check(self, bad_step: int | None = None) -> int | None:
        """Take in a signal that came between events; distributed, agree on the stop and on the
        first NaN/Inf step (returned) in one collective. Every rank calls it at the same point."""
        if self.asked is None and self._signum() is not None:
            self._ask(None)
        if self.single:
            return bad_step
        code = 0 if self.asked is None else 1 + (self.asked.signum or 0)
        bad_step, agreed = distributed.agree(bad_step, code)
        if agreed and self.decided is None:
            self.decided = self.asked if agreed == code else Stop("rank 0", agreed - 1 or None)
        return bad_step


@dataclass
class Progress:
    """Where an epoch's training is: the epoch, the loader's random state as it began (which
    replays its batches), and, once steps are done, their count and running sums. A run
    stopped mid-epoch keeps it (the checkpoint holds `to_dict()`); `train_one_epoch` starts
    from it, skipping the `steps` already done."""

    epoch: int = 1
    loader_rng: torch.Tensor | None = None
    steps: int = 0
    seen: int = 0
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    world_size: int = 1  # the processes whose batches `steps` counts

    to_dict = asdict

    @classmethod
    def from_dict(cls, data: dict) -> Progress:
        return cls(**{key: data[key] for key in data if key in cls.__dataclass_fields__})


class NonFiniteLoss(Exception):
    def __init__(self, step: int):
        self.step = step


class _Tally:
    """Each step's loss, logits and labels are kept as they are (no device work per step) and
    folded into the epoch's sums every NAN_CHECK_EVERY steps. The fold is also where a NaN/Inf
    loss is caught, with its exact step: one host sync per window, none per step."""

    def __init__(self, device: torch.device, start: Progress | None):
        self.losses, self.logits, self.labels, self.sizes = [], [], [], []
        self.first_step, self.seen = 0, start.seen if start else 0
        zero = torch.zeros((), dtype=torch.float64)
        loss_sum = start.loss_sum if start and start.loss_sum is not None else zero
        correct = start.correct if start and start.correct is not None else zero.long()
        # non_blocking: a plain CPU-to-CUDA copy would wait for the GPU's queue to drain.
        self.loss_sum = loss_sum.to(device, torch.float64, non_blocking=True)
        self.correct_sum = correct.to(device, torch.long, non_blocking=True)

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

    def fold(self, emit: Channel | None = None) -> None:
        """Add the window to the sums; raise NonFiniteLoss at the first NaN/Inf step. With
        `emit`, that and the stop decision are agreed among the ranks (Channel.check)."""
        bad = None
        if self.losses:
            losses = torch.stack(self.losses).double()
            if len(set(self.sizes)) == 1:  # every batch of the window has the same size
                window = losses.sum() * self.sizes[0]
            else:
                sizes = torch.tensor(self.sizes, dtype=torch.float64)
                window = (losses * sizes.to(losses.device, non_blocking=True)).sum()
            # In float64 a sum of finite losses stays finite: one check (the host sync of this
            # window) covers every step; the exact bad step is looked for only when needed.
            if not math.isfinite(window.item()):
                bad = self.first_step + int((~torch.isfinite(losses)).nonzero()[0])
            else:
                self.loss_sum += window
                predicted = torch.cat(self.logits).argmax(1)
                self.correct_sum += (predicted == torch.cat(self.labels)).sum()
                self.losses, self.logits, self.labels, self.sizes = [], [], [], []
        bad = emit.check(bad) if emit is not None else bad
        if bad is not None:
            raise NonFiniteLoss(bad)

    def sum_ranks(self) -> _Tally:
        """Distributed: the sums and sample count over all ranks (every rank gets them)."""
        if distributed.active():
            distributed.all_sum(self.loss_sum, self.correct_sum)
            (self.seen,) = distributed.sum_ints(self.seen)
        return self

    def partial(self, start: Progress, step: int) -> Progress:
        """The epoch `start` began, interrupted after `step`: what continues it."""
        sums = {"loss_sum": self.loss_sum.cpu(), "correct": self.correct_sum.cpu()}
        return replace(start, steps=step, seen=self.seen, **sums)

    def means(self) -> dict:
        return {
            "loss": self.loss_sum.item() / self.seen,
            "acc": self.correct_sum.item() / self.seen,
        }


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except that BatchNorm layers whose parameters are all frozen stay in eval
    mode, so a frozen backbone's running statistics do not drift."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()


def _mixed_loss(loss_fn, logits, labels, partners, lam: float) -> torch.Tensor:
    """The loss; mixed batches: the two labels' losses, weighted by their shares."""
    loss = loss_fn(logits, labels)
    return loss if lam >= 1.0 else lam * loss + (1.0 - lam) * loss_fn(logits, partners)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    cfg: TrainConfig,
    *,
    precision: Precision | None = None,
    stepped: Sequence = (),
    mix: Mixup | None = None,
    emit: Channel | None = None,
    start: Progress | None = None,
) -> dict:
    """One pass over the training batches; returns mean loss, accuracy and optimizer steps.

    Steps the optimizer every `cfg.accumulate` batches (and after the last one), clipping the
    gradients' norm to `cfg.grad_clip`, then whatever is `stepped` (`.after_step()`: the
    schedule, the EMA). `mix` mixes each batch (the loss is then the mix of the two labels'
    losses, and accuracy counts the label with the larger share). `emit` hears each batch;
    once a stop is decided the epoch ends at the next optimizer step and returns {"partial":
    Progress}: the steps done and the running sums, which `start` takes to continue the same
    epoch (its first `steps` batches are drawn and skipped, so the loader's random state
    replays exactly). Raises NonFiniteLoss(step) for a NaN/Inf loss. Distributed (`model` in DDP):
    gradients are averaged at optimizer steps only, and the sums are over all ranks.
    """
    emit, start = emit or Channel(), start or Progress()
    precision = precision or Precision(scaler=torch.amp.GradScaler(enabled=False))
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    set_train_mode(model)
    params = [p for p in model.parameters() if p.requires_grad]
    total, skip, steps, epoch = len(batches), start.steps, 0, start.epoch
    # A resumed epoch's running sums are the totals over all ranks: only rank 0 starts with them.
    tally = _Tally(next(model.parameters()).device, start if distributed.rank() == 0 else None)
    optimizer.zero_grad(set_to_none=True)
    for step, (images, labels) in enumerate(batches, start=1):
        if step <= skip:
            continue
        boundary = step % cfg.accumulate == 0 or step == total
        partners, lam = labels, 1.0
        if mix is not None:
            images, partners, lam = mix(images, labels, epoch, step)
        # DDP averages gradients in backward; between optimizer steps that would be wasted.
        with model.no_sync() if ddp and not boundary else contextlib.nullcontext():
            with precision.autocast():
                logits = model(images)
                loss = _mixed_loss(loss_fn, logits, labels, partners, lam)
            detached = loss.detach()
            full = tally.add(step, detached, logits.detach(), labels if lam >= 0.5 else partners)
            precision.scaler.scale(loss / cfg.accumulate if cfg.accumulate > 1 else loss).backward()
        if boundary:
            _optimizer_step(optimizer, precision.scaler, params, cfg.grad_clip, stepped)
            steps += 1
        # The step's loss as a tensor (reading it would sync the device): for lr-find.
        emit(BatchEnd(step, tally.seen, detached, logits.detach(), labels))
        if full or step == total:
            tally.fold(emit)
        if boundary and step < total and emit.decided:
            tally.fold(emit)  # the window since the last fold (every rank is at this step)
            return {"partial": tally.sum_ranks().partial(start, step), "steps": steps}
    return {**tally.sum_ranks().means(), "steps": steps}


def _optimizer_step(optimizer, scaler, params: list, grad_clip, stepped: Sequence) -> None:
    """Clip, step (through the fp16 scaler), zero the gradients, then `.after_step()` of each of
    `stepped` (the schedule, the EMA)."""
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    for each in stepped:
        each.after_step()


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    details: bool = False,
    autocast=contextlib.nullcontext,
    tta: str = "none",
    keep: Callable | None = None,
) -> dict:
    """Mean loss (plain cross-entropy) and accuracy over a whole split, in eval mode.

    With `details`, also top-5 accuracy (when there are more than 5 classes) and the confusion
    matrix (`confusion[true][predicted]` counts) as nested lists. `tta` (flip, flip+shift):
    the logits are the mean over the views of data.tta_views. `keep(images, labels, logits)`
    hears each batch as the model received it, with its float (TTA: mean) logits: eval's
    mistakes are chosen there, without a second pass over the split. Distributed, each rank
    reads its shard and the sums are added over the ranks: every sample counts exactly once.
    """
    model.eval()
    device = next(model.parameters()).device
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    confusion, seen = None, 0
    for images, labels in batches:
        with autocast():
            outputs = [model(view) for view in tta_views(images, tta)]
        logits = outputs[0].float() if len(outputs) == 1 else torch.stack(outputs).float().mean(0)
        if keep is not None:
            keep(images, labels, logits)
        loss += F.cross_entropy(logits, labels, reduction="sum").double()
        predicted = logits.argmax(1)
        correct += (predicted == labels).sum()
        seen += len(labels)
        if details:
            classes = logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
            confusion += torch.bincount(labels * classes + predicted, minlength=classes**2)
            if classes > 5:
                top5 += (logits.topk(5, dim=1).indices == labels[:, None]).any(1).sum()
    if distributed.active():
        distributed.all_sum(loss, correct, top5)
        (seen,) = distributed.sum_ints(seen)
    metrics = {"loss": loss.item() / seen, "acc": correct.item() / seen}
    if details:
        classes = int(len(confusion) ** 0.5)
        metrics["confusion"] = confusion.view(classes, classes).tolist()
        if classes > 5:
            metrics["top5"] = top5.item() / seen
    return metrics
