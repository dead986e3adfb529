"""Atomic writes and safe loading of checkpoints and run files.

Every file is written to a temporary name in the same folder, flushed to disk, then moved
over the final name with `os.replace`, so a crash never leaves a partial file under a final
name. Checkpoints hold only tensors and plain types and are read with
`torch.load(weights_only=True)`: loading one never runs code.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

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
            raise DltrainError(f"could not write {path}: {err.strerror or err}") from None
        raise


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save(payload: dict, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load(path: str | Path) -> dict:
    """Load a dltrain checkpoint safely; every failure is a one-line DltrainError."""
    path = Path(path)
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
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DltrainError(f"{path}: the checkpoint is damaged or truncated ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DltrainError(
            f"{path}: not a dltrain checkpoint (no model, config and class names in it; "
            "a bare state dict can be used as model.pretrained)"
        )
    return payload
