"""The run folder: config.yaml, metrics.csv, summary.json beside the checkpoints."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from dltrain.checkpoint import atomic_write, write_json
from dltrain.config import Config
from dltrain.errors import DltrainError

RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "summary.json",
    "last.pt",
    "best.pt",
    "test_ledger.jsonl",
)


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
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
            for extra in [*path.glob("eval-*.json"), *path.glob("confusion-*.csv")]:
                extra.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dltrain-write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise DltrainError(f"cannot write the run folder {path}: {err.strerror or err}") from None
    return path


class RunFiles:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)

    def write_config(self, cfg: Config) -> None:
        text = cfg.to_yaml()
        atomic_write(self.dir / "config.yaml", lambda handle: handle.write(text.encode()))

    def append_metrics(self, row: dict) -> None:
        path = self.dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.dir) if (self.dir / "metrics.csv").exists() else []

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.csv with `rows` (on resume: drop epochs after the checkpoint)."""
        if not rows:
            (self.dir / "metrics.csv").unlink(missing_ok=True)
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
        atomic_write(self.dir / "metrics.csv", lambda handle: handle.write(text.encode()))

    def write_summary(self, summary: dict) -> None:
        write_json(self.dir / "summary.json", summary)


def read_metrics(run_dir: str | Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return [
            {key: float(value) if key != "epoch" else int(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]
