"""Weights & Biases (logging.wandb, extra: wandb): one W&B run per dltrain run, its local files
in <run>/wandb (offline runs wait there for `wandb sync`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dltrain.config import Config, WandbConfig
from dltrain.errors import MissingExtra
from dltrain.reporting.events import Summary
from dltrain.reporting.trackers.base import Tracker, numbers_and_text, params

# wandb.init waits 90 s for its service by default; unless the user set WANDB_INIT_TIMEOUT, a
# W&B that cannot start should cost less.
_INIT_TIMEOUT = 30.0


class Wandb(Tracker):
    name = "wandb"

    def __init__(self, settings: WandbConfig, run_dir: Path, warn: Callable[[str], None]):
        try:
            import wandb
        except ImportError:
            raise MissingExtra(
                "logging.wandb needs the wandb package; install it with pip install "
                "'dltrain[wandb]' (or leave logging.wandb unset)"
            ) from None
        super().__init__(run_dir, warn)
        self.settings, self.wandb = settings, wandb

    def start(self, cfg: Config, saved: dict | None) -> None:
        where = {"project": self.settings.project or cfg.name, "entity": self.settings.entity}
        # A resume goes on with the W&B run it started, if it is still to go to the same place.
        again = saved is not None and all(saved.get(key) == value for key, value in where.items())
        timeout = {} if "WANDB_INIT_TIMEOUT" in os.environ else {"init_timeout": _INIT_TIMEOUT}
        self.run = self.wandb.init(
            **where,
            mode=self.settings.mode,
            tags=self.settings.tags,
            name=self.files.dir.name,
            dir=str(self.files.dir),
            id=saved["id"] if again else None,
            resume="allow" if again else None,
            # silent and no console capture: the CLI is the only printer
            settings=self.wandb.Settings(silent=True, console="off", **timeout),
        )
        if not again:
            self.files.write_tracker(self.name, {**where, "id": self.run.id})
        self.run.config.update(params(cfg), allow_val_change=True)  # resume may change values

    def epoch(self, row: dict) -> None:
        numbers = {key: value for key, value in row.items() if key != "epoch" and value is not None}
        self.run.log(numbers, step=row["epoch"])

    def end(self, summary: Summary) -> None:
        numbers, text = numbers_and_text(summary)
        self.run.summary.update({**numbers, **text, "dltrain.best_model": self.best_model()})
        for path in self.artifacts():  # into the W&B run's files
            self.run.save(str(path), base_path=str(self.files.dir), policy="now")
        self.finish(summary.status)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=1 if status in ("failed", "interrupted") else 0)
