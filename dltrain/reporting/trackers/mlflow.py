"""MLflow (logging.mlflow, extra: mlflow): one MLflow run per dltrain run, through MlflowClient
(no global active run, so nothing leaks into the caller's own MLflow use)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from dltrain.config import Config, MlflowConfig
from dltrain.errors import MissingExtra
from dltrain.reporting.events import Summary
from dltrain.reporting.trackers.base import Tracker, as_text, numbers_and_text, params

# How a dltrain run's end reads in MLflow: a stopped run (early stopping, a sweep's pruner) did
# finish; an interrupted one is resumable and becomes RUNNING again on resume.
STATUS = {"interrupted": "KILLED", "failed": "FAILED"}

# MLflow's HTTP client retries for minutes by default (7 retries, doubling waits, 120 s
# timeouts); an unreachable server should cost seconds. Values the user set are kept.
_FAST = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
_BATCH = 100  # MLflow takes at most 100 params in one log_batch


class MLflow(Tracker):
    name = "mlflow"

    def __init__(self, settings: MlflowConfig, run_dir: Path, warn: Callable[[str], None]):
        try:
            import mlflow
        except ImportError:
            raise MissingExtra(
                "logging.mlflow needs the mlflow package; install it with pip install "
                "'dltrain[mlflow]' (or leave logging.mlflow unset)"
            ) from None
        super().__init__(run_dir, warn)
        self.settings, self.mlflow = settings, mlflow
        for name, value in _FAST.items():
            os.environ.setdefault(name, value)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # the CLI is the only printer

    def start(self, cfg: Config, saved: dict | None) -> None:
        from mlflow.entities import Param

        uri = self.settings.tracking_uri or self.mlflow.get_tracking_uri()
        self.client = self.mlflow.MlflowClient(uri)
        known = {}
        if saved and saved.get("tracking_uri") == uri:  # a resume: the same MLflow run goes on
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            known = self.client.get_run(self.run_id).data.params
        else:
            name = self.settings.experiment or cfg.name
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
            run_name = self.settings.run_name or self.files.dir.name
            tags = {"dltrain.run_dir": str(self.files.dir.resolve())}
            run = self.client.create_run(experiment, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            self.files.write_tracker(self.name, {"tracking_uri": uri, "run_id": self.run_id})
        # MLflow params cannot change: on resume only keys new to the run are logged (a value
        # changed with --set is in the config.yaml logged at the end).
        config = params(cfg)
        todo = [Param(key, as_text(value)) for key, value in config.items() if key not in known]
        for first in range(0, len(todo), _BATCH):
            self.client.log_batch(self.run_id, params=todo[first : first + _BATCH])

    def epoch(self, row: dict) -> None:
        numbers = {key: value for key, value in row.items() if key != "epoch"}
        self._metrics(numbers, row["epoch"])

    def end(self, summary: Summary) -> None:
        from mlflow.entities import RunTag

        numbers, text = numbers_and_text(summary)
        self._metrics(numbers, summary.epochs_run)
        if best := self.best_model():
            text["dltrain.best_model"] = best
        self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in text.items()])
        for path in self.artifacts():
            self.client.log_artifact(self.run_id, str(path))
        self.finish(summary.status)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS.get(status, "FINISHED"))

    def _metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)
