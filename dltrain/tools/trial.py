"""One trial of a sweep: the config its suggested values make, trained as a normal run whose
epochs the study's pruner hears, then told to the study with its outcome; and the rows of
sweep.csv read back from the study."""

from __future__ import annotations

import copy
import math
import socket
import time
from pathlib import Path

import yaml

from dltrain.config import Config, Space, parse_space, set_key, validate
from dltrain.errors import ConfigError, DltrainError, Interrupted
from dltrain.reporting.events import EpochEnd, Event, Summary


def run_trial(study, folder: Path, settings: dict) -> dict:
    """Ask for a trial, train it as a normal run, tell the outcome; returns its row. A failure
    (bad combination, NaN, …) is recorded with its reason; Ctrl-C marks the trial
    interrupted, queues its values again and raises Interrupted."""
    from optuna.trial import TrialState

    trial = study.ask()
    trial.set_user_attr("sweep", identity(folder))
    run_dir = folder / f"trial-{trial.number:03d}"
    trial.set_user_attr("folder", run_dir.name)
    started = time.perf_counter()
    try:
        summary = _fit(trial_config(trial, settings), run_dir, trial, settings["metric"])
    except (Interrupted, KeyboardInterrupt) as err:
        interrupted(study, trial, trial.params)
        raise resume_hint(folder, err.exit_code if isinstance(err, Interrupted) else 130) from None
    except DltrainError as err:
        state, summary, reason = TrialState.FAIL, None, "; ".join(str(err).splitlines())
    except BaseException as err:  # a bug: recorded, then shown with its traceback
        reason = f"{type(err).__name__}: {err}"
        _tell(study, trial, TrialState.FAIL, None, reason, started, settings["metric"])
        raise
    else:
        state, reason = TrialState.COMPLETE, ""
        if summary.status == "stopped":
            state, reason = TrialState.PRUNED, summary.stop_reason
    _tell(study, trial, state, summary, reason, started, settings["metric"])
    return trial_rows(study, settings, [trial.number])[0]


def trial_config(trial, settings: dict) -> Config:
    """The base config with the values the trial suggests and no sweep section: a normal run's
    config (`dltrain train trial-NNN/config.yaml` repeats the trial). Optuna's choices are
    plain: lists and mappings are offered by their YAML text."""
    data = copy.deepcopy(settings["config"])
    data["sweep"] = {}
    for key, space in spaces(settings).items():
        if space.kind == "choice":
            labels = [_label(choice) for choice in space.choices]
            value = space.choices[labels.index(trial.suggest_categorical(key, labels))]
        else:
            number = trial.suggest_int if space.kind == "int" else trial.suggest_float
            value = number(key, space.low, space.high, log=space.log)
        set_key(data, key.split("."), value)
    try:
        return validate(data, f"trial {trial.number}")
    except ConfigError as err:
        raise DltrainError("; ".join(err.lines)) from None


def _label(value):
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return value


def _fit(cfg: Config, run_dir: Path, trial, metric: str) -> Summary:
    """Train, reporting each epoch's metric to the study, whose pruner may stop the run; the
    run folder gets its curves.png like any run (fit draws it)."""
    from dltrain.training.engine import fit

    def pruner(event: Event) -> str | None:
        if isinstance(event, EpochEnd):
            row = event.row
            trial.report(row[metric], row["epoch"])
            if trial.should_prune():
                return (
                    f"pruned by the sweep at epoch {row['epoch']}: {metric} {row[metric]:.4f} "
                    "worse than the median of earlier trials at that epoch"
                )
        return None

    return fit(cfg, run_dir, [pruner])


def _tell(study, trial, state, summary: Summary | None, reason: str, started: float, metric: str):
    """Record the outcome (value, epochs, seconds, reason as user attributes) and tell it."""
    best = summary.best_metrics[metric] if summary and summary.best_metrics else None
    if state.name == "COMPLETE" and not (best is not None and math.isfinite(best)):
        state, reason = type(state).FAIL, f"{metric} is {best} (no finite value)"
    trial.set_user_attr("best", best)
    trial.set_user_attr("epochs", summary.epochs_run if summary else 0)
    trial.set_user_attr("seconds", time.perf_counter() - started)
    trial.set_user_attr("reason", reason)
    study.tell(trial, best if state.name == "COMPLETE" else None, state=state)


def interrupted(study, trial, params: dict) -> None:
    """A trial that did not end: failed as interrupted, its values queued to run again."""
    from optuna.trial import TrialState

    trial.set_user_attr("interrupted", True)
    trial.set_user_attr("reason", "its values run again as a new trial")
    study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={"retry_of": trial.number})


def identity(folder: Path) -> str:
    return f"{socket.gethostname()}:{Path(folder).resolve()}"


def resume_hint(folder: Path, code: int) -> Interrupted:
    kept = "sweep stopped; finished trials are kept, interrupted ones run again"
    return Interrupted(f"{kept}: dltrain sweep --resume {folder}", code)


def trial_rows(study, settings: dict, numbers: list[int] | None = None) -> list[dict]:
    """Trials as plain rows, best first (complete by value, then pruned, then failed)."""
    keys, rows = list(spaces(settings)), []
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name == "WAITING" or (numbers and trial.number not in numbers):
            continue
        attrs = trial.user_attrs
        row = {
            "trial": trial.number,
            "state": "interrupted" if attrs.get("interrupted") else trial.state.name.lower(),
            "params": {key: trial.params.get(key) for key in keys},
            "value": attrs.get("best"),
            "epochs": attrs.get("epochs"),
            "seconds": attrs.get("seconds"),
            "reason": attrs.get("reason", ""),
            "folder": attrs.get("folder", f"trial-{trial.number:03d}"),
        }
        rows.append(row)
    sign = -1 if settings["direction"] == "maximize" else 1
    order = {"complete": 0, "pruned": 1, "running": 2, "fail": 3, "interrupted": 4}

    def key(row):
        value = math.inf if row["value"] is None else sign * row["value"]
        return order.get(row["state"], 5), value, row["trial"]

    return sorted(rows, key=key)


def spaces(settings: dict) -> dict[str, Space]:
    return {key: parse_space(spec) for key, spec in settings["config"]["sweep"]["params"].items()}
