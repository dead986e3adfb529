"""Trackers: listeners that copy a run to where its user follows runs: TensorBoard
(tensorboard.py), MLflow (mlflow.py), Weights & Biases (wandb.py).

Each is used only when its `logging` key is set, never because a package is installed; a
missing package is one line naming the extra, before any data is read. Rank 0 alone tracks
(the engine builds them there only). The run folder stays the source of truth: a tracker that
fails mid-run says so once and training goes on. Their packages are imported only when asked
for, so `dltrain --help` imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dltrain.config import Config


def build(cfg: Config, run_dir: Path, warn: Callable[[str], None] = lambda text: None) -> list:
    """The trackers the config asks for (each has `close()`, called however the run ends).
    `warn(text)`: how a tracker that stops working mid-run says so, once."""
    found = []
    if cfg.logging.tensorboard:
        from dltrain.reporting.trackers.tensorboard import TensorBoard

        found.append(TensorBoard(run_dir, cfg))
    if cfg.logging.mlflow is not None:
        from dltrain.reporting.trackers.mlflow import MLflow

        found.append(MLflow(cfg.logging.mlflow, run_dir, warn))
    if cfg.logging.wandb is not None:
        from dltrain.reporting.trackers.wandb import Wandb

        found.append(Wandb(cfg.logging.wandb, run_dir, warn))
    return found


def off(cfg: Config) -> Config:
    """The config with every tracker off (lr-find's probes write only their own files)."""
    none = cfg.logging.model_copy(update={"tensorboard": False, "mlflow": None, "wandb": None})
    return cfg.model_copy(update={"logging": none})
