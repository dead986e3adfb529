"""What the MLflow and W&B trackers share: the events they follow, the config as flat params,
the summary as numbers and text, and the one rule for failures (warn once, then stay off)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from dltrain.config import Config
from dltrain.reporting.events import EpochEnd, Event, RunEnd, RunStart, Summary
from dltrain.reporting.runs import RunFiles

# The run folder's files a tracker keeps a copy of when the run ends (the weights stay: the
# best model's path is logged instead).
ARTIFACTS = ("metrics.csv", "curves.png", "summary.json", "config.yaml")

_LEFT = ("facts", "class_counts")  # summary.json keys not logged one by one


class Tracker:
    """A listener that copies the run to a tracking service: `start` on RunStart (a new tracker
    run, or on resume the one trackers.json names), `epoch` on each EpochEnd, `end` on RunEnd.
    Whatever goes wrong on the service's side is one warning; the tracker is then off and
    training goes on, the run folder holding everything."""

    name = ""  # its key under `logging` and in trackers.json

    def __init__(self, run_dir: Path, warn: Callable[[str], None]):
        self.files, self.warn = RunFiles(run_dir), warn
        self.on = True
        self.open = False  # a tracker run started and not yet ended

    def __call__(self, event: Event) -> None:
        if not self.on:
            return
        try:
            if isinstance(event, RunStart):
                self.start(event.config, self.files.read_trackers().get(self.name))
                self.open = True
            elif isinstance(event, EpochEnd) and self.open:
                self.epoch(event.row)
            elif isinstance(event, RunEnd) and self.open:
                self.open = False
                self.end(event.summary)
        except Exception as err:  # noqa: BLE001 - a tracker never fails the run
            self.on = False
            self.warn(
                f"{self.name}: {one_line(err)}; tracking stopped for this run (the run folder "
                f"{self.files.dir} has everything)"
            )

    def close(self) -> None:
        """However the run ended: a tracker run still open (the run raised before its end was
        told) ends as failed."""
        if self.on and self.open:
            self.open = False
            with contextlib.suppress(Exception):  # the run's own error is the one to show
                self.finish("failed")

    def start(self, cfg: Config, saved: dict | None) -> None:
        raise NotImplementedError

    def epoch(self, row: dict) -> None:
        raise NotImplementedError

    def end(self, summary: Summary) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        """End the tracker run as a run with summary status `status` ended."""
        raise NotImplementedError

    def artifacts(self) -> list[Path]:
        return [path for path in map(self.files.dir.joinpath, ARTIFACTS) if path.exists()]

    def best_model(self) -> str | None:
        path = self.files.dir / "best.pt"
        return str(path.resolve()) if path.exists() else None


def flat(data: dict, prefix: str = "") -> dict:
    """A nested mapping as one level of dotted keys: {"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}."""
    items = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def params(cfg: Config) -> dict:
    """The resolved config as flat params (`optim.lr`, `data.batch_size`, ...)."""
    return flat(cfg.model_dump(mode="json"))


def as_text(value) -> str:
    """A value as the config spells it: 0.003, true, null, [64]."""
    return value if isinstance(value, str) else json.dumps(value)


def numbers_and_text(summary: Summary) -> tuple[dict[str, float], dict[str, str]]:
    """summary.json as `summary.`-prefixed numbers (metrics) and the rest as text (tags); the
    images per class and lists (the input shape) are left to summary.json itself."""
    numbers, text = {}, {}
    data = {key: value for key, value in summary.to_dict().items() if key not in _LEFT}
    for key, value in flat(data, "summary.").items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers[key] = float(value)
        elif isinstance(value, str | bool):
            text[key] = as_text(value)
    return numbers, text


def one_line(err: Exception) -> str:
    """An exception as a short line (services' errors can be long and span lines)."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."
