"""`dltrain runs`: what each run folder under a root holds, read from its files alone (config,
metrics, summary, the test ledger, the lock), whatever state a run was left in."""

from __future__ import annotations

import json
import os
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path

from dltrain.config import lower_is_better
from dltrain.errors import DltrainError
from dltrain.reporting.runs import lock_holder, read_mapping, read_metrics

# summary.json's statuses; "stopped": a caller's rule (a sweep's pruner) ended the run
SUMMARY_STATUSES = ("finished", "stopped_early", "stopped", "interrupted", "failed")
# running: a process holds the folder's lock; killed: none does, and the run has no current
# summary (the process died without one: SIGKILL, power loss)
RUN_STATUSES = (*SUMMARY_STATUSES, "running", "killed", "unreadable")


def list_runs(root: str | Path) -> list[dict]:
    """Every run folder under `root` (one holding config.yaml or metrics.csv) as `describe_run`
    gives it, newest first. A damaged file marks its run "unreadable"; the listing goes on."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DltrainError(f"{root} {what}; give the folder that holds your runs (default: runs)")
    runs = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "config.yaml" in files or "metrics.csv" in files:
            runs.append(describe_run(folder))
    return sorted(runs, key=lambda run: (run["started_ts"], run["path"]), reverse=True)


def describe_run(run_dir: str | Path) -> dict:
    """One run's files as plain values, None where missing; a damaged file: "unreadable"."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    config = read_mapping(run_dir / "config.yaml", "yaml", problems)
    summary = read_mapping(run_dir / "summary.json", "json", problems)
    try:
        rows = read_metrics(run_dir)
    except (OSError, DltrainError) as err:
        rows, problems = [], [*problems, f"metrics.csv: {getattr(err, 'strerror', None) or err}"]
    stale = summary is not None and _newer(run_dir / "metrics.csv", run_dir / "summary.json")
    # The epoch the config's early stopping would call best so far (first of equal values).
    stopping = _dig(config, "train", "early_stopping")
    monitor, mode = str(_dig(stopping, "monitor") or "val_acc"), _dig(stopping, "mode") or "auto"
    lower = lower_is_better(monitor, mode)
    scored = [row for row in rows if row.get(monitor) is not None]
    top = (min if lower else max)(scored, key=lambda row: row[monitor], default={})
    best = next((row for row in rows if row["epoch"] == top.get("epoch")), {})
    started = _started(run_dir)
    run = {
        "path": str(run_dir),
        "name": _text(_dig(summary, "name") or _dig(config, "name")),
        "model": _text(_dig(config, "model", "name")),
        "dataset": _text(_dig(config, "data", "dataset")),
        "status": "killed",  # one of RUN_STATUSES
        "resumable": False,  # `dltrain train --resume` can continue it
        "epochs": len(rows),
        "max_epochs": _num(_dig(config, "train", "epochs")),
        "best_epoch": best.get("epoch"),  # as the config's early stopping would pick it so far
        "best_val_acc": best.get("val_acc"),
        **_test_uses(run_dir),
        "params": _num(_dig(summary, "params")),
        "seconds": sum(row.get("seconds") or 0.0 for row in rows) if rows else None,
        "started": datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
        "started_ts": started,  # seconds since the epoch, for sorting
        "problem": None,  # why the run is unreadable
    }
    if summary is not None and not stale:  # else the run has gone on since (resumed)
        status = summary.get("status")
        if status not in SUMMARY_STATUSES:
            problems.append(f"summary.json: unknown status {status!r}")
        run["status"] = status
        epochs = _num(summary.get("epochs_run"))
        run["epochs"] = run["epochs"] if epochs is None else epochs
        run["best_epoch"] = _num(summary.get("best_epoch"))
        run["best_val_acc"] = _num(_dig(summary, "best_metrics", "val_acc"))
        run["seconds"] = _num(summary.get("seconds"))
    if lock_holder(run_dir) is not None:
        run["status"] = "running"
    if problems:
        run["status"], run["problem"] = "unreadable", "; ".join(problems)
    run["resumable"] = run["status"] in ("killed", "interrupted") and config is not None
    return run


def _test_uses(run_dir: Path) -> dict:
    """How many times the run's test set was measured (test_ledger.jsonl) and the last
    accuracy (from the ledger, else eval-test.json)."""
    uses, acc, lines = 0, None, []
    with suppress(OSError, ValueError):
        lines = (run_dir / "test_ledger.jsonl").read_text(encoding="utf-8").splitlines()
    for line in filter(str.strip, lines):
        uses += 1
        with suppress(ValueError, AttributeError):
            value = _num(json.loads(line).get("acc"))
            acc = value if value is not None else acc
    report = read_mapping(run_dir / "eval-test.json", "json", []) if acc is None else None
    if report is not None:
        acc, uses = _num(report.get("acc")), max(uses, 1)
    return {"test_acc": acc, "test_uses": uses}


def _started(run_dir: Path) -> float:
    """When the run started: the time in its folder name (runs/<name>/<time>), else the
    modification time of its config.yaml, metrics.csv or the folder."""
    with suppress(ValueError):
        return time.mktime(time.strptime(run_dir.name[:15], "%Y%m%d-%H%M%S"))
    for path in (run_dir / "config.yaml", run_dir / "metrics.csv", run_dir):
        with suppress(OSError):
            return path.stat().st_mtime
    return 0.0


def _newer(path: Path, than: Path) -> bool:
    with suppress(OSError):
        return path.stat().st_mtime_ns > than.stat().st_mtime_ns
    return False


def _dig(data, *keys):
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _num(value) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value) -> str | None:
    return None if value is None else str(value)
