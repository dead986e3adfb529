"""The run folder: config.yaml, metrics.csv, summary.json beside the checkpoints."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import yaml

from dltrain.checkpoint import atomic_write, write_json
from dltrain.config import Config
from dltrain.errors import DltrainError

RUN_FILES = tuple("config.yaml metrics.csv summary.json last.pt best.pt test_ledger.jsonl".split())


def new_run_dir(
    cfg: Config, run_dir: str | Path | None = None, root: str | Path = "runs", force: bool = False
) -> Path:
    """`run_dir` if given, else runs/<name>/<timestamp>/. A folder that holds a run already is
    refused unless `force`, which first removes that run's files."""
    if run_dir is None:
        base = Path(root) / cfg.name / time.strftime("%Y%m%d-%H%M%S")
        path, n = base, 1
        while path.exists():
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
    else:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise DltrainError(f"--run-dir {path} is a file; give a folder for the run's outputs")
        if (path / "config.yaml").exists():
            if not force:
                raise DltrainError(
                    f"{path} already holds a run; continue it with --resume {path}, replace it "
                    "with --force, or choose another --run-dir"
                )
            old = [path / name for name in RUN_FILES]
            for stale in [*old, *path.glob("eval-*.json"), *path.glob("confusion-*.csv")]:
                stale.unlink(missing_ok=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dltrain-write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise DltrainError(f"cannot write the run folder {path}: {err.strerror or err}") from None
    return path


class TensorBoard:
    """Scalars per epoch and the config as text, in <run>/tensorboard (torch.utils.tensorboard)."""

    def __init__(self, run_dir: Path, cfg: Config):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DltrainError(
                "logging.tensorboard: true needs the tensorboard package; install it with "
                "pip install 'dltrain[tensorboard]' (or set logging.tensorboard: false)"
            ) from None
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "```yaml\n" + cfg.to_yaml() + "```")

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key not in ("epoch", "seconds") and value is not None:
                split, _, metric = key.rpartition("_")  # train_eval_acc -> acc/train_eval
                self.writer.add_scalar(f"{metric}/{split}" if split else key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class RunFiles:
    """A run's files; with `write=False` (ranks other than 0 of a distributed run) writes do
    nothing and reads still work."""

    def __init__(self, run_dir: Path, write: bool = True):
        self.dir, self.write = Path(run_dir), write

    def write_config(self, cfg: Config) -> None:
        if self.write:
            text = cfg.to_yaml()
            atomic_write(self.dir / "config.yaml", lambda handle: handle.write(text.encode()))

    def append_metrics(self, row: dict) -> None:
        if not self.write:
            return
        path, header = self.dir / "metrics.csv", None
        with suppress(FileNotFoundError), open(path, newline="") as handle:
            header = next(csv.reader(handle), None)
        with open(path, "a", newline="") as handle:
            # A resumed run keeps the columns its file started with.
            writer = csv.DictWriter(handle, fieldnames=header or list(row), extrasaction="ignore")
            if header is None:
                writer.writeheader()
            writer.writerow(row)

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.dir)

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.csv with `rows` (on resume: drop epochs after the checkpoint)."""
        path = self.dir / "metrics.csv"
        if self.write and not rows:
            path.unlink(missing_ok=True)
        elif self.write:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write(path, lambda handle: handle.write(buffer.getvalue().encode()))

    def write_summary(self, summary: dict) -> None:
        if self.write:
            write_json(self.dir / "summary.json", summary)

    def remove_temporary(self) -> None:
        """Temporary files a process killed while writing left behind (.last.pt.tmp-PID)."""
        if self.write:
            for stale in self.dir.glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)


# --- reading runs back: `dltrain runs`, `dltrain plot` -----------------------------------

# summary.json's statuses; "stopped": a caller's rule (a sweep's pruner) ended the run
SUMMARY_STATUSES = ("finished", "stopped_early", "stopped", "interrupted", "failed")
RUN_STATUSES = (*SUMMARY_STATUSES, "incomplete", "unreadable")  # incomplete: no summary yet


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.csv, also of a run still writing it or killed while appending: numbers as floats
    (epoch as int), empty cells as None, a row shorter than the header (a half-written last
    line) dropped. [] without a metrics.csv; DltrainError for a file that is not CSV at all."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            for raw in csv.DictReader(handle):
                raw.pop(None, None)  # cells beyond the header
                if None in raw.values():
                    continue
                with suppress(KeyError, ValueError):
                    row = {key: float(value) if value else None for key, value in raw.items()}
                    row["epoch"] = int(float(raw["epoch"]))
                    rows.append(row)
    except csv.Error as err:
        raise DltrainError(f"{path} is damaged: {err}") from None
    return rows


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
    config = _read_mapping(run_dir / "config.yaml", "yaml", problems)
    summary = _read_mapping(run_dir / "summary.json", "json", problems)
    try:
        rows = read_metrics(run_dir)
    except (OSError, DltrainError) as err:
        rows, problems = [], [*problems, f"metrics.csv: {getattr(err, 'strerror', None) or err}"]
    stale = summary is not None and _newer(run_dir / "metrics.csv", run_dir / "summary.json")
    # The epoch the config's early stopping would call best so far (first of equal values).
    stopping = _dig(config, "train", "early_stopping")
    monitor, mode = str(_dig(stopping, "monitor") or "val_acc"), _dig(stopping, "mode") or "auto"
    lower = mode == "min" or (mode == "auto" and monitor.endswith("loss"))
    scored = [row for row in rows if row.get(monitor) is not None]
    top = (min if lower else max)(scored, key=lambda row: row[monitor], default={})
    best = next((row for row in rows if row["epoch"] == top.get("epoch")), {})
    started = _started(run_dir)
    run = {
        "path": str(run_dir),
        "name": _text(_dig(summary, "name") or _dig(config, "name")),
        "model": _text(_dig(config, "model", "name")),
        "dataset": _text(_dig(config, "data", "dataset")),
        "status": "incomplete",  # one of RUN_STATUSES
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
    if problems:
        run["status"], run["problem"] = "unreadable", "; ".join(problems)
    return run


def _read_mapping(path: Path, kind: str, problems: list[str]) -> dict | None:
    """A YAML or JSON file holding a mapping; None if absent; a damaged one adds a problem."""
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if kind == "json" else yaml.safe_load(text)
    except OSError as err:
        problem = err.strerror or err
    except (ValueError, yaml.YAMLError):  # JSONDecodeError and UnicodeDecodeError included
        problem = f"not valid {kind.upper()}"
    else:
        if isinstance(data, dict):
            return data
        problem = f"expected a mapping, found {type(data).__name__}"
    problems.append(f"{path.name}: {problem}")
    return None


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
    report = _read_mapping(run_dir / "eval-test.json", "json", []) if acc is None else None
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
