"""The run folder: config.yaml, metrics.csv, summary.json beside the checkpoints."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from contextlib import suppress
from pathlib import Path

import yaml

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from dltrain.config import Config
from dltrain.errors import DltrainError, RunInUse
from dltrain.files import atomic_write, write_failure, write_json

RUN_FILES = tuple(
    "config.yaml parent.json metrics.csv summary.json last.pt best.pt test_ledger.jsonl "
    "trackers.json".split()
)
LOCK = ".dltrain.lock"  # held by the process training in the folder (RunLock)


def stamped(folder: str | Path, prefix: str = "") -> Path:
    """A new path in `folder` named by the time: <prefix><YYYYmmdd-HHMMSS>, with -1, -2, ...
    after it when a path of that name exists (two runs started in the same second)."""
    base = Path(folder) / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def new_run_dir(
    cfg: Config, run_dir: str | Path | None = None, root: str | Path = "runs", force: bool = False
) -> Path:
    """`run_dir` if given, else runs/<name>/<timestamp>/. A folder that holds a run already is
    refused unless `force`, which first removes that run's files. A folder holding files
    under a run file's name (metrics.csv, ...) but no config.yaml, which dltrain writes first,
    holds someone else's files: refused even with `force`."""
    return made_run_dir(cfg, run_dir, root, force)[0]


def made_run_dir(
    cfg: Config, run_dir: str | Path | None = None, root: str | Path = "runs", force: bool = False
) -> tuple[Path, tuple[Path, ...]]:
    """`new_run_dir`, and the folders made for it (it, and parents that did not exist), deepest
    first: what `remove_unused` may take away again if the run writes nothing."""
    if run_dir is None:
        path = stamped(Path(root) / cfg.name)
    else:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise DltrainError(f"--out {path} is a file; give a folder for the run's outputs")
        found = [name for name in RUN_FILES if (path / name).exists()]
        if found and "config.yaml" not in found:
            raise DltrainError(
                f"--out {path} holds {', '.join(found)} but no config.yaml: not a dltrain "
                "run, and dltrain writes over no file it did not make (not with --force "
                "either); choose another --out, or move those files away"
            )
        if (path / "config.yaml").exists():
            refuse_if_in_use(path)
            if not force:
                raise DltrainError(
                    f"{path} already holds a run; continue it with --resume {path}, replace it "
                    "with --force, or choose another --out"
                )
            old = [path / name for name in RUN_FILES]
            for pattern in ("eval-*.json", "confusion-*.csv", "confusion-*.png", "mistakes-*.png"):
                old += path.glob(pattern)  # what dltrain eval wrote of the old run
            for stale in old:
                stale.unlink(missing_ok=True)
    made = tuple(folder for folder in (path, *path.parents) if not folder.exists())
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".dltrain-write-test-{os.getpid()}"  # its own: two may start at once
        probe.touch()
        probe.unlink(missing_ok=True)
    except OSError as err:
        raise DltrainError(f"cannot write the run folder {path}: {err.strerror or err}") from None
    return path, made


STARTED = ("config.yaml", "parent.json", LOCK)  # what a run writes before its first epoch


def remove_unused(made: tuple[Path, ...]) -> None:
    """Take away the folders `made_run_dir` made for a run that failed before writing anything
    but its start (STARTED): a folder `dltrain runs` would list as a run that never ran. Call
    it holding the run's lock, so that no other process trains there. A folder holding
    anything else (a tracker's files, a user's) stays, and so does every folder above one
    that is not empty."""
    if not made:
        return
    with suppress(OSError):  # whatever cannot go stays: the run's error is what matters
        if any(path.name not in STARTED for path in made[0].iterdir()):
            return
        for name in STARTED:
            (made[0] / name).unlink(missing_ok=True)
        for folder in made:
            folder.rmdir()


class RunLock:
    """A run folder's lock: an exclusive `flock` on <run>/.dltrain.lock, taken by the process
    that trains in the folder before its first write and held until it ends. The kernel lets
    go when the process dies, SIGKILL included, so a killed run never leaves a stale lock.
    A second process training into the folder is refused, and `dltrain runs` tells a running
    run from a killed one. (No locking where fcntl is missing: Windows.)"""

    def __init__(self, folder: str | Path, new: bool = False):
        self.folder, self.new = Path(folder), new  # new: chosen as holding no run
        self.handle = None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK, "a+")
        # A few tries: `dltrain runs` holds a shared lock for an instant when it looks.
        for _ in range(50):
            with suppress(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            time.sleep(0.005)
        else:
            handle.close()
            refuse_if_in_use(self.folder)
            raise RunInUse(f"{self.folder} is in use by another dltrain process")
        if self.new and (self.folder / "config.yaml").exists():  # since it was chosen
            handle.close()
            raise RunInUse(
                f"{self.folder}: another dltrain process started a run there meanwhile; "
                "choose another --out"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # closing lets go of the lock
            self.handle = None


def lock_holder(folder: str | Path) -> int | None:
    """The pid of the process training in `folder` now (0 if it is not known), else None."""
    if fcntl is None:
        return None
    try:
        handle = open(Path(folder) / LOCK)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def refuse_if_in_use(folder: Path) -> None:
    pid = lock_holder(folder)
    if pid is not None:
        raise RunInUse(
            f"{folder} is in use: dltrain process {pid or '(pid unknown)'} is training in it; "
            "wait for it to end (or stop it), or choose another --out"
        )


def never_saved(folder: str | Path) -> bool:
    """A run folder with a config but no checkpoint: a run killed before its first write."""
    folder = Path(folder)
    checkpoints = [folder / name for name in ("last.pt", "best.pt")]
    return (
        folder.is_dir()
        and (folder / "config.yaml").is_file()
        and not any(path.exists() for path in checkpoints)
    )


def read_parent(folder: str | Path) -> dict | None:
    """parent.json (RunFiles.write_parent), or None for a run that is not a finetune."""
    path = Path(folder) / "parent.json"
    if not path.exists():
        return None
    parent = read_mapping(path, "json", problems := [])
    if parent is None:
        raise DltrainError(f"{path} is damaged ({problems[0]}); start the finetune again")
    return parent


class RunFiles:
    """A run's files; with `write=False` (ranks other than 0 of a distributed run) writes do
    nothing and reads still work."""

    def __init__(self, run_dir: Path, write: bool = True):
        self.dir, self.write = Path(run_dir), write

    def write_config(self, cfg: Config) -> None:
        if self.write:
            text = cfg.to_yaml()
            atomic_write(self.dir / "config.yaml", lambda handle: handle.write(text.encode()))

    def write_parent(self, parent: dict | None) -> None:
        """A finetune run's source, beside its config: what a start from epoch 0 needs besides
        the config (checkpoints hold it too, once there are any)."""
        if self.write and parent is not None:
            write_json(self.dir / "parent.json", parent)

    def append_metrics(self, row: dict) -> None:
        """One row more; a failed write (a full disk) is one line, and a half-written last line
        is what `read_metrics` drops and a resume rewrites."""
        if not self.write:
            return
        path, header = self.dir / "metrics.csv", None
        with suppress(FileNotFoundError), open(path, newline="") as handle:
            header = next(csv.reader(handle), None)
        try:
            with open(path, "a", newline="") as handle:
                # A resumed run keeps the columns its file started with.
                names = header or list(row)
                writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
                if header is None:
                    writer.writeheader()
                writer.writerow(row)
        except OSError as err:
            kept = f"the checkpoints hold epoch {row['epoch'] - 1} at most; resume with: "
            raise write_failure(path, err, kept + f"dltrain train --resume {self.dir}") from None

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

    def start_over(self) -> None:
        """A run that starts from epoch 0 has no rows and no summary yet (a run killed
        before its first checkpoint, started again in its folder, leaves none behind)."""
        if self.write:
            # trackers.json too: a new run is a new tracker run, not the old one continued.
            for name in ("metrics.csv", "summary.json", "trackers.json"):
                (self.dir / name).unlink(missing_ok=True)
            for staged in self.dir.glob(".best-*.pt"):  # a killed run's saving.flush
                staged.unlink(missing_ok=True)

    def read_trackers(self) -> dict:
        """trackers.json: the tracker runs (MLflow, W&B) this run reports to, by tracker, so
        that a resume continues them; a damaged file counts as none (new tracker runs)."""
        return read_mapping(self.dir / "trackers.json", "json", []) or {}

    def write_tracker(self, name: str, ids: dict) -> None:
        """Keep the ids of the tracker run `name` started (written as it starts)."""
        if self.write:
            write_json(self.dir / "trackers.json", {**self.read_trackers(), name: ids})

    def write_summary(self, summary: dict) -> None:
        if not self.write:
            return
        try:
            write_json(self.dir / "summary.json", summary)
        except DltrainError as err:
            then = f"once fixed, dltrain train --resume {self.dir} writes it"
            raise DltrainError(f"{err}; {then}") from None

    def remove_temporary(self) -> None:
        """Temporary files a process killed while writing left behind (.last.pt.tmp-PID)."""
        if self.write:
            for stale in self.dir.glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)


# --- reading runs back: `dltrain runs`, `dltrain plot` -----------------------------------


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


def read_mapping(path: Path, kind: str, problems: list[str]) -> dict | None:
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
