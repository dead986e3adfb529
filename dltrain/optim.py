"""Optimizers, their parameter groups, and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from dltrain.config import OptimConfig, ScheduleConfig
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
        in_head = head_name is not None and f"{module_name}.".startswith(f"{head_name}.")
        lr = cfg.lr * (head_lr_mult if in_head else 1.0)
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
    """A builder `(groups, cfg) -> cls` with `cfg.lr` and the named OptimConfig fields."""
    return lambda groups, cfg: cls(groups, lr=cfg.lr, **{f: getattr(cfg, f) for f in fields})


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
        mode = "min" if cfg.monitor == "val_loss" else "max"
        scheduler = lr_sched.ReduceLROnPlateau(optimizer, mode, cfg.factor, cfg.patience)
        return Schedule(scheduler, "metric", cfg.monitor)
    # cosine, with optional linear warmup, stepped per optimizer step for a smooth curve
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    lambdas = [_cosine(warmup, total, cfg.min_lr / group["lr"]) for group in optimizer.param_groups]
    return Schedule(lr_sched.LambdaLR(optimizer, lambdas), "step")


def _cosine(warmup: int, total: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
