"""One training run's state: what `fit` builds from a config, checkpoints and restores.

`build` turns a config into a Session (device, data, model, optimizer, schedule, precision,
early stopping; DDP-wrapped when several processes train); `resume` restores one from a
checkpoint. The loop that runs a Session is in engine.py.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dltrain import __version__, checkpoint, distributed
from dltrain.config import Config
from dltrain.data import Splits, build_splits, make_loader
from dltrain.early_stopping import EarlyStopping
from dltrain.errors import DltrainError
from dltrain.finetune import check_freeze
from dltrain.models import build_model, needs_rgb
from dltrain.optim import Schedule, build_optimizer, build_schedule
from dltrain.runs import RunFiles
from dltrain.runtime import (
    apply_speedups,
    precision_tools,
    resolve_device,
    seed_everything,
    set_determinism,
    set_threads,
)


@dataclass
class Session:
    """Everything one training run holds, built from a config (and restored on resume)."""

    cfg: Config
    run_dir: Path
    device: torch.device
    splits: Splits
    train_batches: object
    val_batches: object
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    autocast: Callable
    precision: str
    stopper: EarlyStopping
    parent: dict | None = None
    epoch: int = 0
    global_step: int = 0
    train_eval_batches: object | None = None
    net: nn.Module | None = None  # what trains: the model, or its DDP/torch.compile wrapper
    eval_net: nn.Module | None = None  # what evaluates: never DDP (shards differ in length)
    trainable: tuple = ()  # which parameters required gradients when DDP wrapped the model
    rows: list = field(default_factory=list)
    best_weights: dict | None = None
    overfitting: str = ""
    tensorboard: object | None = None
    partial: dict | None = None  # an interrupted epoch: steps done, sums, loader state
    on_epoch: Callable[[dict], str | None] | None = None  # a caller's stop rule (e.g. a sweep)
    halted: str = ""  # why on_epoch stopped the run
    stopping: bool = False  # a stop signal, agreed by all ranks: save and end

    def payload(self, row: dict) -> dict:
        """A checkpoint: enough to evaluate, predict, and resume exactly."""
        return {
            "format": checkpoint.FORMAT,
            "version": __version__,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "best_metric": self.stopper.best,
            "rng": checkpoint.rng_state(),
            "loader_rng": self.train_batches.generator.get_state(),
            "config": self.cfg.model_dump(mode="json"),
            "data_info": self.splits.info.to_dict(),
            "class_names": list(self.splits.info.class_names),
            "metrics": row,
            "parent": self.parent,
            "partial": self.partial,
            "world_size": distributed.world_size(),
        }

    @property
    def writes(self) -> bool:
        """Only rank 0 writes files (and reports progress) in a distributed run."""
        return distributed.is_main()

    def save(self, payload: dict, name: str, *also: str) -> None:
        """Write the checkpoint once, as `name`; the names in `also` link to it."""
        if self.writes:
            checkpoint.save(payload, self.run_dir / name, *(self.run_dir / n for n in also))

    def restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.scaler.load_state_dict(payload["scaler"])
        self.stopper.load_state_dict(payload["early_stopping"])
        self.train_batches.generator.set_state(payload["loader_rng"])
        checkpoint.set_rng_state(payload["rng"])
        self.epoch, self.global_step = payload["epoch"], payload["global_step"]


def build(cfg: Config, run_dir: Path, parent: dict | None, resuming: bool) -> Session:
    """Everything a run needs, from its config; under torchrun, this process's share."""
    launched = distributed.launched()
    device = distributed.start(cfg.device) if launched else resolve_device(cfg.device)
    shard = (distributed.rank(), distributed.world_size())
    set_threads()
    set_determinism(cfg.train.deterministic)
    # The same seed on every rank: identical initial weights, splits and shuffles.
    seed_everything(cfg.seed)
    splits = build_splits(cfg.data, cfg.seed, rgb=needs_rgb(cfg.model))
    train_batches = make_loader(splits, "train", cfg.data, device, seed=cfg.seed, shard=shard)
    val_batches = make_loader(splits, "val", cfg.data, device, shard=shard)
    model = build_model(splits.info, cfg.model, weights=not resuming).to(device)
    head_lr_mult = 1.0
    if parent is not None:
        check_freeze(model, cfg.finetune)
        head_lr_mult = cfg.finetune.head_lr_mult
    optimizer = build_optimizer(model, cfg.optim, model.head_name, head_lr_mult)
    steps = -(-len(train_batches) // cfg.train.accumulate)
    schedule = build_schedule(optimizer, cfg.schedule, cfg.train.epochs, steps)
    autocast, scaler, precision = precision_tools(device, cfg.train.precision)
    stopper = EarlyStopping(cfg.train.early_stopping)
    size = cfg.train.train_eval_size
    train_eval = (
        make_loader(splits, "train_eval", cfg.data, device, size=size, shard=shard)
        if size
        else None
    )
    loaders = [train_batches, val_batches] + ([train_eval] if train_eval else [])
    eval_net = apply_speedups(cfg, model, device, loaders)
    net = distributed.wrap(eval_net, device, cfg.train.sync_batchnorm)
    return Session(
        cfg,
        run_dir,
        device,
        splits,
        train_batches,
        val_batches,
        model,
        optimizer,
        schedule,
        scaler,
        autocast,
        precision,
        stopper,
        parent,
        train_eval_batches=train_eval,
        net=net,
        eval_net=eval_net,
        trainable=trainable(model),
    )


def trainable(model: nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in model.parameters())


def resume(session: Session, payload: dict, files: RunFiles) -> dict | None:
    """Continue where `payload` left off: states, RNG, metrics rows, best weights. Returns
    the interrupted epoch's progress when the checkpoint was written mid-epoch."""
    session.restore(payload)
    partial = saved_partial = payload.get("partial")
    if partial is not None and payload.get("world_size", 1) != distributed.world_size():
        # Its steps count batches of another number of processes: from the saved weights, the
        # interrupted epoch's data is read again from its start.
        session.train_batches.generator.set_state(partial["loader_rng"])
        partial = None
    session.rows = [row for row in files.read_metrics() if row["epoch"] <= session.epoch]
    files.rewrite_metrics(session.rows)
    if files.write:
        for stale in session.run_dir.glob(".*.tmp-*"):  # left by a process killed while saving
            stale.unlink(missing_ok=True)
    best_epoch = session.stopper.best_epoch
    if best_epoch == session.epoch and saved_partial is None:  # mid-epoch weights are not it
        session.best_weights = copy.deepcopy(session.model.state_dict())
    elif best_epoch is not None and (session.run_dir / "best.pt").exists():
        with contextlib.suppress(DltrainError):
            best = checkpoint.load(session.run_dir / "best.pt")
            if best["epoch"] == best_epoch and not best.get("partial"):
                session.best_weights = best["model"]
    return partial
