"""Early stopping: monitor, mode, patience, min_delta; says why it stopped."""

from __future__ import annotations

import math

from dltrain.config import EarlyStoppingConfig, lower_is_better


class EarlyStopping:
    """Tracks the best value of a monitored metric. One notion of improvement serves best.pt
    and stopping: better than the best so far by more than `min_delta`; a NaN never improves."""

    def __init__(self, cfg: EarlyStoppingConfig):
        self.monitor, self.patience, self.min_delta = cfg.monitor, cfg.patience, cfg.min_delta
        self.mode = "min" if lower_is_better(cfg.monitor, cfg.mode) else "max"
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None  # set when patience runs out
        self.wait = 0

    def improves(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        if self.mode == "min":  # a NaN compares False: never an improvement
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def as_good(self, value: float, other: float) -> bool:
        """Whether `value` is at least as good as `other` in the monitor's direction (no
        min_delta); a NaN is never as good as a number."""
        if math.isnan(value) or math.isnan(other):
            return not math.isnan(value)
        return value <= other if self.mode == "min" else value >= other

    def step(self, value: float, epoch: int) -> bool:
        """Record one epoch's value; returns True when it is the new best."""
        if self.improves(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            self.stopped_epoch = epoch
        return False

    @property
    def should_stop(self) -> bool:
        return self.stopped_epoch is not None

    @property
    def reason(self) -> str:
        if not self.should_stop:
            return ""
        by = f" by ≥ {self.min_delta:g}" if self.min_delta else ""
        best = "none" if self.best is None else f"{self.best:.4g} at epoch {self.best_epoch}"
        return (
            f"stopped at epoch {self.stopped_epoch}: {self.monitor} did not improve{by} "
            f"for {self.patience} epoch{'s' * (self.patience != 1)}; best {best}"
        )

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in ("best", "best_epoch", "wait", "stopped_epoch")}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        if self.patience is None or self.wait < self.patience:
            self.stopped_epoch = None  # a patience raised on resume lets the run go on


def overfitting_note(rows: list[dict], window: int = 3, rise: float = 0.02) -> str | None:
    """A one-line warning when validation accuracy has been flat for `window` epochs while
    the (eval-mode) training accuracy kept rising by `rise` or more; None otherwise."""
    if len(rows) <= window or rows[-1].get("train_eval_acc") is None:
        return None
    best = max(row["val_acc"] for row in rows)
    flat_since = next(row for row in rows if row["val_acc"] >= best - 0.005)
    if rows[-1]["epoch"] - flat_since["epoch"] < window:
        return None
    gained = rows[-1]["train_eval_acc"] - flat_since["train_eval_acc"]
    if gained < rise:
        return None
    return (
        f"val accuracy flat since epoch {flat_since['epoch']} while train accuracy rose "
        f"{gained * 100:.0f} points: overfitting — try weight_decay, dropout, augmentation"
    )
