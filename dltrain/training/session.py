"""What one training run is made of: `build` turns a config into a Session of built things.

A Session holds the device, the data and its loaders, the model (and the wrapper that trains
it), the loss, optimizer, schedule, EMA, mixup, precision tools, early stopping and the run's
files. Nothing here runs: the loop in engine.py does; saving.py saves and restores one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dltrain.config import Config, DataConfig
from dltrain.data import DataInfo, Mixup, Splits, build_splits, for_model, make_loader
from dltrain.errors import ConfigError
from dltrain.models import build_model, count_macs, facts, model_input
from dltrain.optim import EMA, Schedule, build_optimizer, build_schedule
from dltrain.reporting.runs import RunFiles
from dltrain.training import distributed
from dltrain.training.early_stopping import EarlyStopping
from dltrain.training.finetune import check_freeze
from dltrain.training.runtime import Precision, apply_speedups, precision_tools, start

TRAIN_EVAL_SHARE = 10  # the gap pass reads at most 1/10 of the training split


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
    loss_fn: nn.Module  # the training loss: label smoothing, class weights
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: Precision
    stopper: EarlyStopping
    parent: dict | None = None  # the source of a finetune run
    ema: EMA | None = None  # train.ema: validated beside the trained weights each epoch
    mix: Mixup | None = None  # data.mixup
    notes: list[str] = field(default_factory=list)  # for the caller, before training starts
    macs: int = 0  # multiply-accumulates of one image's forward pass
    input_from: str = ""  # what of the input the pretrained weights set (the start line says)

    @property
    def run_dir(self) -> Path:
        return self.files.dir

    @property
    def info(self) -> DataInfo:
        return self.splits.info

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    def validated(self, weights: str | None) -> nn.Module:
        """What evaluates the weights named ("ema": the average; else the trained model)."""
        return self.ema.module if weights == "ema" else self.eval_net

    def state(self, weights: str | None) -> dict:
        """The state dict of the weights named ("ema": the average; else the trained model)."""
        return (self.ema.module if weights == "ema" else self.model).state_dict()


def build(
    cfg: Config,
    run_dir: Path,
    parent: dict | None = None,
    resuming: bool = False,
    progress=None,
) -> Session:
    """Everything a run needs, from its config; under torchrun, this process's share.
    `parent` (finetune) switches on freezing checks and the head's learning rate; `resuming`
    leaves `model.pretrained` unread (the checkpoint brings the weights); `progress(done,
    total, split)` hears an image folder's decode into memory."""
    files = RunFiles(run_dir, write=distributed.is_main())
    files.dir.mkdir(parents=True, exist_ok=True)
    device = start(cfg)
    shard = (distributed.rank(), distributed.world_size())
    data, splits = model_data(cfg, device)
    train_batches = make_loader(
        splits, "train", data, device, seed=cfg.seed, shard=shard, progress=progress
    )
    val_batches = make_loader(splits, "val", data, device, shard=shard, progress=progress)
    # At most a tenth of the training split: forward only, a few % of an epoch's work.
    size = min(cfg.train.train_eval_size, -(-len(splits.train) // TRAIN_EVAL_SHARE))
    train_eval = (
        make_loader(splits, "train_eval", data, device, size=size, shard=shard) if size else None
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
    run = Session(
        cfg=cfg,
        files=files,
        device=device,
        splits=splits,
        train_batches=train_batches,
        val_batches=val_batches,
        train_eval_batches=train_eval,
        model=model,
        net=distributed.wrap(eval_net, device, cfg.train.sync_batchnorm),
        eval_net=eval_net,
        loss_fn=_loss(cfg, splits, device),
        optimizer=optimizer,
        schedule=schedule,
        precision=precision_tools(device, cfg.train.precision),
        stopper=EarlyStopping(cfg.train.early_stopping),
        parent=parent,
        ema=EMA(model, cfg.train.ema, steps) if cfg.train.ema.decay else None,
        mix=Mixup(cfg.data.mixup, cfg.seed) if mixes(cfg) else None,
        notes=list(splits.notes),
        # One image in eval mode, no_grad: training untouched.
        macs=count_macs(model, splits.info),
        input_from=_input_from(cfg, model_input(cfg.model)),
    )
    run.notes += _notes(run, cfg.train.epochs * steps)
    return run


def model_data(cfg: Config, device: torch.device | None = None) -> tuple[DataConfig, Splits]:
    """The data config as the model asks for it (the pretrained weights' size and mean/std
    where the config leaves them open) and the splits built from it: what training reads,
    for the commands that must see the same data (`dltrain show`). `device`: where an image
    folder's cache would live (data.cache: auto weighs its free memory)."""
    wants = model_input(cfg.model)
    data = for_model(cfg.data, wants)
    return data, build_splits(data, cfg.seed, rgb=wants.rgb, device=device)


def _input_from(cfg: Config, wants) -> str:
    """What the pretrained weights' preprocessing set because the config left it open."""
    taken = ["size"] if cfg.data.resize is None and wants.size else []
    taken += ["mean/std"] if cfg.data.normalize == "auto" and wants.mean is not None else []
    if not taken:
        return ""
    return (
        f"{' and '.join(taken)} of the {cfg.model.name} weights ({facts.weights(cfg.model.name)})"
    )


def mixes(cfg: Config) -> bool:
    """Whether data.mixup mixes batches at all (a probability and an alpha above 0)."""
    mixup = cfg.data.mixup
    return bool(mixup.prob and (mixup.alpha or mixup.cutmix_alpha))


def _loss(cfg: Config, splits: Splits, device: torch.device) -> nn.Module:
    """Cross-entropy with train.label_smoothing and train.class_weights (balanced: inverse class
    frequency of the training split, scaled to mean 1); validation and test loss stay plain."""
    weights, classes = cfg.train.class_weights, splits.info.num_classes
    if weights == "balanced":
        counts = torch.bincount(splits.train.labels, minlength=classes).clamp(min=1)
        weights = 1.0 / counts.double()
        weights = weights / weights.mean()
    elif isinstance(weights, list) and len(weights) != classes:
        problem = f"{len(weights)} weights for {classes} classes; give one weight per class"
        raise ConfigError([f"train.class_weights: {problem}"])
    weight = None if weights == "none" else torch.as_tensor(weights, dtype=torch.float32)
    return nn.CrossEntropyLoss(
        weight=None if weight is None else weight.to(device),
        label_smoothing=cfg.train.label_smoothing,
    )


IMBALANCED = 5  # the largest class this many times the smallest: worth a note


def class_counts(splits: Splits) -> dict[str, int]:
    """Training images per class, by class name, in the classes' order."""
    counts = torch.bincount(splits.train.labels, minlength=splits.info.num_classes)
    return dict(zip(splits.info.class_names, counts.tolist(), strict=True))


def _notes(run: Session, total_steps: int) -> list[str]:
    """Choices that are likely to hurt, said once at the start."""
    notes, cfg = [], run.cfg
    if cfg.train.class_weights != "none" and cfg.data.sampler == "balanced":
        notes.append(
            "train.class_weights and data.sampler: balanced both correct for class imbalance; "
            "together they over-correct (rare classes then weigh far more than common ones): "
            "use one of them"
        )
    counts = class_counts(run.splits)
    fewest, most = min(counts.values()), max(counts.values())
    even = cfg.train.class_weights == "none" and cfg.data.sampler == "random"
    if even and most >= IMBALANCED * max(fewest, 1):
        notes.append(
            f"classes are imbalanced ({fewest:,}-{most:,} training images each); consider "
            "train.class_weights: balanced (or data.sampler: balanced)"
        )
    if run.ema is not None and (left := run.ema.leftover(total_steps)) > 0.1:
        updates = max(1, (total_steps - run.ema.start) // run.ema.every)
        notes.append(
            f"train.ema.decay {run.ema.decay:g} is slow for this run's {updates:,} averaging "
            f"updates: at the end the average still holds {left:.0%} of the weights it started "
            f"from; try decay <= {1 - 3 / updates:.4g}, or train.ema.warmup: true"
        )
    return notes
