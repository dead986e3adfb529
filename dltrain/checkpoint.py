"""Atomic writes and safe loading of checkpoints and run files.

Every file is written to a temporary name in the same folder, flushed to disk, then moved
over the final name with `os.replace`, so a crash never leaves a partial file under a final
name. Checkpoints hold only tensors and plain types and are read with
`torch.load(weights_only=True)`: loading one never runs code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dltrain.errors import DltrainError

FORMAT = "dltrain-checkpoint"


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)` so that it appears whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            hint = " (the disk is full: free some space)" if err.errno == errno.ENOSPC else ""
            raise DltrainError(
                f"could not write {path}: {err.strerror or err}{hint}; the previous {path.name}, "
                "if any, is intact"
            ) from None
        raise


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def file_sha256(path: Path) -> str:
    """The file's SHA-256, to record exactly which checkpoint was used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(payload: dict, path: Path, *copies: Path) -> None:
    """Write the checkpoint to `path`, and the same file under each of `copies` (best.pt when
    the epoch's last.pt is also the best): a hard link, not a second write. Safe because a
    checkpoint is never written in place: the next save replaces last.pt by a new file, and
    the link keeps the old one. Where links are not supported, the file is copied."""
    import torch  # here, not at the top: `dltrain runs` and `plot` start without torch

    atomic_write(path, lambda handle: torch.save(payload, handle))
    for copy in copies:
        tmp = copy.with_name(f".{copy.name}.tmp-{os.getpid()}")
        try:
            tmp.unlink(missing_ok=True)
            os.link(path, tmp)
            os.replace(tmp, copy)
        except OSError:
            tmp.unlink(missing_ok=True)
            with open(path, "rb") as source:
                atomic_write(copy, lambda handle, source=source: shutil.copyfileobj(source, handle))


def load(path: str | Path) -> dict:
    """Load a dltrain checkpoint safely; every failure is a one-line DltrainError."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise DltrainError(f"{path} is a folder; give a checkpoint file such as {path}/best.pt")
    if not path.is_file():
        raise DltrainError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # A GLOBAL is a reference to Python code: refuse it, never retry an unsafe load.
        if "GLOBAL" in str(err) or "Unsupported global" in str(err):
            raise DltrainError(
                f"{path}: refused to load: the file holds Python objects beyond tensors and "
                "plain values, which could run code; dltrain loads weights-only checkpoints"
            ) from None
        raise DltrainError(
            f"{path}: the checkpoint is damaged (not a readable checkpoint)"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch's unpickler fails in many ways on garbage
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DltrainError(f"{path}: the checkpoint is damaged or truncated ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DltrainError(
            f"{path}: not a dltrain checkpoint (no model, config and class names in it; "
            "a bare state dict can be used as model.pretrained)"
        )
    return payload


def rng_state() -> dict:
    """Every random generator's state as tensors and plain values (weights_only-loadable)."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {
            "version": version,
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss": gauss,
        },
    }


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


def find_resume(target: str | Path) -> tuple[dict, Path, list[str]]:
    """The checkpoint to resume from: a file, or a run folder's last.pt (falling back to an
    intact best.pt when last.pt is damaged). Returns (payload, its path, notes)."""
    target = Path(target)
    if target.is_file():
        return load(target), target, []
    if not target.is_dir():
        raise DltrainError(f"--resume {target}: no such run folder or checkpoint")
    notes, problems = [], []
    for name in ("last.pt", "best.pt"):
        path = target / name
        if not path.exists():
            continue
        try:
            payload = load(path)
        except DltrainError as err:
            problems.append(str(err))
            continue
        if problems:
            notes.append(f"{problems[0]}; resuming from {path} (epoch {payload['epoch']}) instead")
        return payload, path, notes
    if problems:
        raise DltrainError(f"--resume {target}: no intact checkpoint ({problems[0]})")
    raise DltrainError(f"--resume {target}: no last.pt or best.pt in this folder")
