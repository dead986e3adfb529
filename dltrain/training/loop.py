"""Where a run is: what the loop changes as it goes, and what a checkpoint keeps of it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dltrain.training.epoch import Progress


@dataclass
class LoopState:
    """Where a run is: what the loop changes as it goes, and what a checkpoint keeps of it."""

    epoch: int = 0  # epochs finished
    global_step: int = 0  # optimizer steps taken
    partial: Progress | None = None  # an interrupted epoch: steps done, sums, loader state
    best_weights: dict | None = None
    weights: str | None = None  # with an EMA: which weights the last epoch validated better
    rows: list[dict] = field(default_factory=list)  # metrics.csv
    overfitting: str = ""  # the note, once given
    trainable: tuple = ()  # which parameters required gradients when DDP last wrapped the model
    pending: dict = field(default_factory=dict)  # checkpoints kept in memory, by file name
    written: float = field(default_factory=time.perf_counter)  # when checkpoints were written
