"""Files written whole or not at all, read safely: the atomic writer every output of dltrain
goes through, one line for a failed write (the reason and the space left), a file's SHA-256,
and the one `torch.load` (tensors and plain values only, never code).

Every file is written to a temporary name in the same folder, flushed, then moved over the
final name (`os.replace`): a crash never leaves a partial file under a final name. torch is
imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dltrain.errors import DltrainError


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
        cause = os_error(err)
        if cause is not None:
            kept = f"the previous {path.name}, if any, is intact"
            raise write_failure(path, cause, kept) from None
        raise


def os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err`: itself, or one that torch wrapped (torch.save turns a failed
    write into RuntimeError "unexpected pos", the OSError left as its context)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def write_failure(path: Path, err: OSError, kept: str) -> DltrainError:
    """One line for a failed write: the file, the reason, the free space left, what is kept."""
    free = ""
    with contextlib.suppress(OSError):
        free = f", {shutil.disk_usage(Path(path).parent).free:,} bytes free there"
    full = " (the disk is full: free some space)" if err.errno == errno.ENOSPC else ""
    return DltrainError(f"could not write {path}: {err.strerror or err}{full}{free}; {kept}")


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


def save(payload: dict, path: Path) -> None:
    """Write the checkpoint to `path`, whole or not at all."""
    import torch

    atomic_write(path, lambda handle: torch.save(payload, handle))


def link(source: Path, name: Path) -> None:
    """`name` becomes the file `source` is (best.pt when last.pt is also the best): a hard
    link, or a copy where links are not supported; atomically either way. Safe: the next save
    replaces `source` by a new file, and the link keeps the old one."""
    tmp = name.with_name(f".{name.name}.tmp-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, name)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(source, "rb") as handle:
            atomic_write(name, lambda out: shutil.copyfileobj(handle, out))


def read(path: str | Path, what: str = "") -> object:
    """The one `torch.load`: tensors and plain values only (`weights_only`), never retried
    unsafely. Every failure is one line naming the file; `what` (e.g. "model.pretrained: ")
    starts it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # A GLOBAL is a reference to Python code: refuse it.
        found = re.search(r"GLOBAL (\S+)|Unsupported global: (\S+)", str(err))
        if found:
            raise DltrainError(
                f"{what}refused to load {path}: it holds Python objects beyond tensors and "
                f"plain values ({found.group(1) or found.group(2)}), which could run code; not "
                "loaded for safety"
            ) from None
        reason = "not a readable PyTorch file"
    except Exception as err:  # noqa: BLE001 - torch's unpickler fails in many ways on garbage
        failed = os_error(err)  # the disk's or the permissions' fault, not the file's
        if failed is not None and failed.errno in (errno.EIO, errno.EACCES, errno.EPERM):
            raise DltrainError(f"{what}cannot read {path}: {failed.strerror or failed}") from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise DltrainError(f"{what}cannot load {path}: the file is damaged or truncated ({reason})")
