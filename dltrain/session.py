"""What one training run is made of: `build` turns a config into a Session of built things.

A Session holds the device, the data and its loaders, the model (and the wrapper that trains
it), optimizer, schedule, precision tools, early stopping and the run's files. Nothing here
runs: the loop in engine.py does, and checkpoint.py saves a Session and restores one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dltrain import distributed
from dltrain.config import Config
from dltrain.data import DataInfo, Splits, build_splits, make_loader
from dltrain.early_stopping import EarlyStopping
from dltrain.finetune import check_freeze
from dltrain.models import build_model, needs_rgb
from dltrain.optim import Schedule, build_optimizer, build_schedule
from dltrain.runs import RunFiles, TensorBoard
from dltrain.runtime import Precision, apply_speedups, precision_tools, start


@dataclass
class Session:
    """Everything `build` made for one run."""

    cfg: Config
    files: RunFiles  # distributed: only rank 0's write
    device: torch.device
    splits: Splits
    train_batches: object
    val_batches: object
    train_eval_batches: object | None  # a fixed training subset read in eval mode (the gap)
    model: nn.Module
    net: nn.Module  # what trains: the model, or its DDP/torch.compile wrapper
    eval_net: nn.Module  # what evaluates: never DDP (the ranks' shards differ in length)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: Precision
    stopper: EarlyStopping
    parent: dict | None = None  # the source of a finetune run
    tensorboard: TensorBoard | None = None

    @property
    def run_dir(self) -> Path:
        return self.files.dir

    @property
    def info(self) -> DataInfo:
        return self.splits.info

    @property
    def world_size(self) -> int:
        return distributed.world_size()


def build(
    cfg: Config, run_dir: Path, parent: dict | None = None, resuming: bool = False
) -> Session:
    """Everything a run needs, from its config; under torchrun, this process's share.
    `parent` (finetune) switches on freezing checks and the head's learning rate; `resuming`
    leaves `model.pretrained` unread (the checkpoint brings the weights)."""
    files = RunFiles(run_dir, write=distributed.is_main())
    files.dir.mkdir(parents=True, exist_ok=True)
    # Asked-for logging that cannot work is an error before any data is read.
    tensorboard = TensorBoard(run_dir, cfg) if cfg.logging.tensorboard and files.write else None
    device = start(cfg)
    shard = (distributed.rank(), distributed.world_size())
    splits = build_splits(cfg.data, cfg.seed, rgb=needs_rgb(cfg.model))
    train_batches = make_loader(splits, "train", cfg.data, device, seed=cfg.seed, shard=shard)
    val_batches = make_loader(splits, "val", cfg.data, device, shard=shard)
    size = cfg.train.train_eval_size
    train_eval = (
        make_loader(splits, "train_eval", cfg.data, device, size=size, shard=shard)
        if size
        else None
    )
    model = build_model(splits.info, cfg.model, weights=not resuming).to(device)
    if parent is not None:
        check_freeze(model, cfg.finetune)
    head_lr_mult = cfg.finetune.head_lr_mult if parent is not None else 1.0
    optimizer = build_optimizer(model, cfg.optim, model.head_name, head_lr_mult)
    steps = -(-len(train_batches) // cfg.train.accumulate)
    schedule = build_schedule(optimizer, cfg.schedule, cfg.train.epochs, steps)
    loaders = [train_batches, val_batches] + ([train_eval] if train_eval else [])
    eval_net = apply_speedups(cfg, model, device, loaders)
    return Session(
        cfg,
        files,
        device,
        splits,
        train_batches,
        val_batches,
        train_eval,
        model,
        distributed.wrap(eval_net, device, cfg.train.sync_batchnorm),
        eval_net,
        optimizer,
        schedule,
        precision_tools(device, cfg.train.precision),
        EarlyStopping(cfg.train.early_stopping),
        parent,
        tensorboard,
    )
