"""What a run tells its listeners: a few small records, published by the engine in this order:
`Note`s and `Decode`s while it sets up, `RunStart`, then per epoch `EpochStart`, a
`BatchEnd` per step and `EpochEnd`, and `RunEnd` with the run's `Summary` however it ended.

A listener is any callable taking one event; one that returns a non-empty string asks the run
to stop, with that reason (the sweep's pruner does). The engine hands every event to each
listener of its list in turn (minGPT's callback list, with types instead of names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dltrain.config import Config


@dataclass(frozen=True)
class Note:
    """A choice likely to hurt, a repair made on resume, a data fact: one line for the user."""

    text: str


@dataclass(frozen=True)
class Decode:
    """How far an image folder's decode into memory got (data.cache: ram)."""

    split: str
    done: int
    total: int


@dataclass(frozen=True)
class Facts:
    """What the start line and the summary say about the run's setup."""

    params: int
    macs: int
    device: str
    processes: int
    precision: str
    sizes: dict[str, int]
    input: list[int]  # channels, height, width as the model sees them
    input_from: str  # what the pretrained weights' preprocessing set, if anything
    class_counts: dict[str, int]  # training images per class


@dataclass(frozen=True)
class RunStart:
    run_dir: Path
    config: Config
    epochs: int  # train.epochs
    first_epoch: int  # 1, or where a resumed run goes on
    batches: int  # training batches per epoch
    facts: Facts


@dataclass(frozen=True)
class EpochStart:
    epoch: int


@dataclass(frozen=True)
class BatchEnd:
    step: int
    seen: int  # training samples so far this epoch
    loss: Any  # the step's loss, a tensor still on the device (reading it syncs)
    logits: Any = None  # the batch's, on the device: what the live report reads accuracy from
    labels: Any = None


@dataclass(frozen=True)
class EpochEnd:
    row: dict  # the epoch's row of metrics.csv (its keys depend on the run: EMA, gap)
    improved: bool  # the monitored metric's best so far
    epochs: int
    mixed: bool  # training accuracy is of mixup/CutMix batches


@dataclass
class Summary:
    """How a run ended, as summary.json holds it (`to_dict`): finished, stopped early, stopped
    (by a listener or a signal: `interrupted`) or failed, and its best epoch."""

    name: str
    status: str
    stop_reason: str
    epochs_run: int
    monitor: str
    best_epoch: int | None
    best_value: float | None
    best_metrics: dict | None
    facts: Facts
    seconds: float
    parent: dict | None
    version: str
    restored_best: bool = False
    ema_decay: float | None = None
    # With an EMA, "ema" or "trained": what best.pt holds and what final_val measured.
    best_weights: str | None = None
    final_weights: str | None = None
    overfitting: str | None = None
    final_val: dict | None = None
    trainable_params: int | None = None
    seconds_per_epoch: float | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        facts = data.pop("facts")
        return {**data, **facts}


@dataclass(frozen=True)
class RunEnd:
    summary: Summary
    run_dir: Path


Event = Note | Decode | RunStart | EpochStart | BatchEnd | EpochEnd | RunEnd
Listener = Callable[[Event], "str | None"]
