"""Optimizers, their parameter groups, learning-rate schedules, and the EMA of the weights:
everything that runs after each optimizer step (`after_step`)."""

from __future__ import annotations

import contextlib
import copy
import inspect
import math

import torch
from torch import nn

from dltrain.config import EmaConfig, OptimConfig, ScheduleConfig, lower_is_better
from dltrain.models.weights import in_head
from dltrain.registry import OPTIMIZERS

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(
    model: nn.Module, cfg: OptimConfig, head_name: str | None = None, head_lr_mult: float = 1.0
) -> list[dict]:
    """Every parameter, grouped by learning rate and weight decay: with `no_decay_bias_norm`,
    biases and normalization layers get no weight decay; the head (`head_name`) gets
    `lr * head_lr_mult`. Frozen parameters are included (no gradient: the optimizer skips them)."""
    groups: dict[tuple, dict] = {}
    for module_name, module in model.named_modules():
        head = head_name is not None and in_head(module_name, head_name)
        lr = cfg.lr * (head_lr_mult if head else 1.0)
        for name, param in module.named_parameters(recurse=False):
            exempt = cfg.no_decay_bias_norm and (name == "bias" or isinstance(module, _NORMS))
            decay = 0.0 if exempt else cfg.weight_decay
            group = groups.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay})
            group["params"].append(param)
    return list(groups.values())


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, head_name: str | None = None, head_lr_mult: float = 1.0
) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(param_groups(model, cfg, head_name, head_lr_mult), cfg)


def _torch_optimizer(cls: type[torch.optim.Optimizer], *fields: str):
    """A builder `(groups, cfg) -> cls` with `cfg.lr` and the named OptimConfig fields. Fused
    (one kernel over all parameters per step) where torch has it for the optimizer and the
    parameters' device: Adam's step on the digits MLP takes 0.35 ms instead of 0.53 on this
    CPU; torch before 2.4 (no fused CPU kernels) falls back to its default."""

    def build(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
        options = {field: getattr(cfg, field) for field in fields}
        devices = {p.device.type for group in groups for p in group["params"]}
        if "fused" in inspect.signature(cls).parameters and devices <= {"cpu", "cuda"}:
            with contextlib.suppress(RuntimeError):
                return cls(groups, lr=cfg.lr, fused=True, **options)
        return cls(groups, lr=cfg.lr, **options)

    return build


OPTIMIZERS.register("sgd")(_torch_optimizer(torch.optim.SGD, "momentum", "nesterov"))
OPTIMIZERS.register("adam")(_torch_optimizer(torch.optim.Adam))
OPTIMIZERS.register("adamw")(_torch_optimizer(torch.optim.AdamW))
OPTIMIZERS.register("rmsprop")(_torch_optimizer(torch.optim.RMSprop, "momentum"))


class Schedule:
    """A scheduler stepped per optimizer "step", per "epoch", or per validation ("metric")."""

    def __init__(self, scheduler=None, interval: str = "epoch", monitor: str | None = None):
        self.scheduler, self.interval, self.monitor = scheduler, interval, monitor

    def after_step(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metrics: dict) -> None:
        if self.scheduler is not None and self.interval == "epoch":
            self.scheduler.step()
        elif self.scheduler is not None and self.interval == "metric":
            self.scheduler.step(metrics[self.monitor])

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int
) -> Schedule:
    """`steps_per_epoch` counts optimizer steps (batches / accumulate, rounded up)."""
    lr_sched = torch.optim.lr_scheduler
    total = epochs * steps_per_epoch
    if cfg.name == "none":
        return Schedule()
    if cfg.name == "step":
        return Schedule(lr_sched.StepLR(optimizer, cfg.step_size, cfg.gamma))
    if cfg.name == "multistep":
        return Schedule(lr_sched.MultiStepLR(optimizer, cfg.milestones, cfg.gamma))
    if cfg.name == "onecycle":
        peaks = [group["lr"] * cfg.max_lr_mult for group in optimizer.param_groups]
        scheduler = lr_sched.OneCycleLR(optimizer, peaks, total, pct_start=cfg.pct_start)
        return Schedule(scheduler, "step")
    if cfg.name == "plateau":
        mode = "min" if lower_is_better(cfg.monitor) else "max"
        scheduler = lr_sched.ReduceLROnPlateau(optimizer, mode, cfg.factor, cfg.patience)
        return Schedule(scheduler, "metric", cfg.monitor)
    # cosine, with optional linear warmup, stepped per optimizer step for a smooth curve
    warmup = warmup_steps(cfg.warmup_epochs, steps_per_epoch, total)
    lambdas = [_cosine(warmup, total, cfg.min_lr / group["lr"]) for group in optimizer.param_groups]
    return Schedule(lr_sched.LambdaLR(optimizer, lambdas), "step")


MIN_WARMUP_STEPS = 100  # Ultralytics' floor for its warmup_epochs, for the same reason


def warmup_steps(epochs: float, steps_per_epoch: int, total: int) -> int:
    """A warmup of `epochs` epochs in optimizer steps, but at least MIN_WARMUP_STEPS (no more
    than a fifth of the run): a warmup in epochs shrinks with the dataset, and 2 epochs of 8
    steps (1,000 images at batch 128) took resnet18 from scratch to lr 0.1 fast enough to
    diverge, where 2 epochs of 390 steps (50,000 images) do not."""
    if epochs <= 0:
        return 0
    return max(round(epochs * steps_per_epoch), min(MIN_WARMUP_STEPS, total // 5))


def _cosine(warmup: int, total: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class EMA:
    """An exponential moving average of a model's weights (train.ema), in a copy of the model:
    every `every` optimizer steps, average = d * average + (1 - d) * weights for the parameters,
    and the buffers (BatchNorm's running statistics) copied from the model as they are. Until
    `start_epoch` the average follows the weights. (Averaging the statistics too, as timm and
    Ultralytics do, was measured on digits with batch norm, 5 seeds: no better with the
    warm-up, a little worse without it; docs/performance.md.)

    With `warmup`, the t-th update (t = 0, 1, ...) uses d = min(decay, (1 + t) / (10 + t)),
    TensorFlow's `ExponentialMovingAverage(num_updates=...)` form: the first update keeps a
    tenth of the average, and d reaches `decay` only after (decay * 10 - 1) / (1 - decay)
    updates (8,990 for 0.999). It scales with the run, not with epochs: however many steps a
    run takes, the average at its end rests on its last third (97% of the weight), never on
    the random initialization. (timm's ModelEmaV3 warm-up and Ultralytics' decay * (1 - exp(-t /
    2000)) ramp the same way; the latter's fixed 2,000 updates still outlast a short run.)
    foreach ops on the weights' device, with Python-number weights: no host sync."""

    def __init__(self, model: nn.Module, cfg: EmaConfig, steps_per_epoch: int):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.every, self.warmup = cfg.decay, cfg.every, cfg.warmup
        self.start = cfg.start_epoch * steps_per_epoch  # optimizer steps before averaging
        self.steps = 0  # optimizer steps seen: saved in checkpoints, so resume continues it
        self.params = list(self.module.parameters()), list(model.parameters())
        self.buffers = list(self.module.buffers()), list(model.buffers())

    def decay_at(self, update: int) -> float:
        """The decay of the `update`-th averaging update (from 0)."""
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    def updates(self, steps: int) -> int:
        """Averaging updates made within the first `steps` optimizer steps."""
        return max(0, steps // self.every - self.start // self.every)

    @torch.no_grad()
    def after_step(self) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        if self.steps <= self.start:
            torch._foreach_copy_(*self.params)
        else:
            decay = self.decay_at(self.updates(self.steps) - 1)
            torch._foreach_lerp_(*self.params, 1.0 - decay)
        if self.buffers[0]:
            torch._foreach_copy_(*self.buffers)

    def leftover(self, total_steps: int) -> float:
        """The share of the weights the average started from that it still holds after a run
        of `total_steps` optimizer steps: the product of the updates' decays."""
        share = 1.0
        for update in range(self.updates(total_steps)):
            share *= self.decay_at(update)
            if share < 1e-12:
                break
        return share
