"""Checkpoints: atomic writes, the one safe load (`read`), what a checkpoint holds (`payload`,
`restore`), and `open_saved`, the one way back from a checkpoint for resume, eval, predict and
finetune.

Every file is written to a temporary name in the same folder, flushed, then moved over the
final name (`os.replace`): a crash never leaves a partial file under a final name. Checkpoints
hold only tensors and plain values, read with `torch.load(weights_only=True)`: loading never
runs code. torch is imported inside the functions: `dltrain runs` and `plot` start without it.
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from dltrain import __version__
from dltrain.config import Config, check_changes, from_dict
from dltrain.errors import DltrainError

if TYPE_CHECKING:
    from dltrain.session import Session

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


def load(path: str | Path) -> dict:
    """Load a dltrain checkpoint safely; every failure is a one-line DltrainError."""
    path = Path(path)
    if path.is_dir():
        raise DltrainError(f"{path} is a folder; give a checkpoint file such as {path}/best.pt")
    if not path.is_file():
        raise DltrainError(f"checkpoint not found: {path}")
    payload = read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DltrainError(
            f"{path}: not a dltrain checkpoint (no model, config and class names in it; "
            "a bare state dict can be used as model.pretrained)"
        )
    return payload


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds a dltrain checkpoint, a damaged or truncated one too: torch.save
    writes its pickle first and uncompressed, and the payload's first key is the format tag,
    so the tag shows within the file's first bytes (never loaded: nothing runs, nothing warns)."""
    try:
        with open(path, "rb") as handle:
            return FORMAT.encode() in handle.read(1 << 20)
    except OSError:
        return False


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


# --- a run's checkpoint: what it holds, and a run restored from it -----------------------


def payload(s: Session, loop, row: dict) -> dict:
    """A checkpoint of session `s` at `loop` (engine.LoopState): enough to evaluate, predict,
    finetune and resume exactly. "model" holds the weights the epoch validated better: with
    train.ema, the average or the trained weights (`loop.weights`), what eval, predict, export
    and finetune read; "ema" holds both and the choice, to resume. A tensor held twice is
    stored once (torch.save keeps one copy of each storage)."""
    ema, trained = s.ema, s.model.state_dict()
    average = None if ema is None else ema.module.state_dict()
    return {
        "format": FORMAT,
        "version": __version__,
        "epoch": loop.epoch,
        "global_step": loop.global_step,
        "model": average if loop.weights == "ema" else trained,
        "ema": None
        if ema is None
        else {"average": average, "trained": trained, "steps": ema.steps, "weights": loop.weights},
        "optimizer": s.optimizer.state_dict(),
        "schedule": s.schedule.state_dict(),
        "scaler": s.precision.scaler.state_dict(),
        "early_stopping": s.stopper.state_dict(),
        "best_metric": s.stopper.best,
        "rng": rng_state(),
        "loader_rng": s.train_batches.generator.get_state(),
        "config": s.cfg.model_dump(mode="json"),
        "data_info": s.info.to_dict(),
        "class_names": list(s.info.class_names),
        "metrics": row,
        "parent": s.parent,
        "partial": loop.partial,
        "world_size": s.world_size,
    }


def keep(s: Session, loop, row: dict, names: list[str], now: bool = False) -> None:
    """Checkpoint the run as each of `names` (last.pt, best.pt): written once checkpoint.interval
    seconds of training have passed since the last write (0: every epoch), or `now`; until then
    a copy on the CPU waits in `loop.pending`, and the next write takes it along. Distributed,
    rank 0 alone writes."""
    if not s.files.write:
        return
    due = now or time.perf_counter() - loop.written >= s.cfg.checkpoint.interval
    if names:
        saved = payload(s, loop, row)
        loop.pending.update(dict.fromkeys(names, saved if due else _copy(saved)))
    if due:  # also when this epoch adds nothing: what waits (an earlier best.pt) is written
        flush(s, loop)


def flush(s: Session, loop) -> None:
    """Write the checkpoints waiting in memory, last.pt the one commit point: a best.pt of an
    earlier epoch is first written beside the current one (.best-<epoch>.pt), then last.pt,
    whose early-stopping state names the best epoch, then the new best takes the name best.pt
    (a link to last.pt when last.pt is the best). A crash at any instant leaves the previous
    pair, or a new last.pt from which `repair_best` (on --resume) puts best.pt right. A failed
    write (a full disk) leaves the previous pair and is one line."""
    last, best = loop.pending.get("last.pt"), loop.pending.get("best.pt")
    folder, staged, committed = s.run_dir, None, last is None
    try:
        if best is not None and last is not None and best is not last:
            staged = folder / f".best-{best['epoch']}.pt"
            save(best, staged)  # a new file: the best.pt the current last.pt names stays
        if last is not None:
            save(last, folder / "last.pt")
            committed = True
        if staged is not None:
            os.replace(staged, folder / "best.pt")
        elif best is not None and best is last:
            link(folder / "last.pt", folder / "best.pt")
        elif best is not None:  # checkpoint.save_last: false
            save(best, folder / "best.pt")
    except (DltrainError, OSError) as err:
        if staged is not None and not committed:
            staged.unlink(missing_ok=True)
        if isinstance(err, OSError):  # moving a written file into place: rarely fails
            err = write_failure(folder / "best.pt", err, "last.pt is intact")
        raise DltrainError(
            f"{err}; once fixed, continue with: dltrain train --resume {folder}"
        ) from None
    loop.pending.clear()
    loop.written = time.perf_counter()


def repair_best(folder: Path, saved: dict) -> list[str]:
    """After a crash, make best.pt hold the epoch that the commit point (`saved`, last.pt)
    calls best: the checkpoint an interrupted flush left as .best-<epoch>.pt, or last.pt
    itself. Returns what was found and done, as notes (none when all was in order)."""
    best_epoch, cfg = saved["early_stopping"]["best_epoch"], saved["config"]
    staged = {}
    for path in folder.glob(".best-*.pt"):
        with contextlib.suppress(ValueError):
            staged[int(path.name[len(".best-") : -len(".pt")])] = path
    path, notes = folder / "best.pt", []
    held, was = _held(path)
    if best_epoch is not None and cfg["checkpoint"]["save_best"] and held != best_epoch:
        if best_epoch in staged:
            os.replace(staged.pop(best_epoch), path)
            notes.append(f"best.pt {was}, not the best epoch {best_epoch}: put back the "
                         f"checkpoint of epoch {best_epoch} that a stopped write left")  # fmt: skip
        elif saved["epoch"] == best_epoch and not saved.get("partial"):
            link(folder / "last.pt", path)
            notes.append(f"best.pt {was}, not the best epoch {best_epoch}: linked it to last.pt")
        else:
            notes.append(
                f"best.pt {was}, and the checkpoint of the best epoch {best_epoch} is not on "
                "disk: training goes on; best.pt is written again at the next better epoch"
            )
    for stale in staged.values():
        stale.unlink(missing_ok=True)
    return notes


def _held(path: Path) -> tuple[int | None, str]:
    """The epoch a whole, epoch-end checkpoint at `path` holds (None if it is missing, damaged
    or of a stop in the middle of an epoch), and that in words."""
    if not path.exists():
        return None, "was missing"
    try:
        saved = load(path)
    except DltrainError:
        return None, "is damaged"
    if saved.get("partial"):
        return None, f"held a stop in the middle of epoch {saved['epoch'] + 1}"
    return saved["epoch"], f"held epoch {saved['epoch']}"


def _copy(value, memo: dict | None = None):
    """The payload with every tensor copied to the CPU: training goes on changing the live ones,
    and a copy on the accelerator would take its memory. What the payload holds twice (the
    EMA's chosen weights) is copied once."""
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, dict):
        copied = {key: _copy(item, memo) for key, item in value.items()}
    elif isinstance(value, list | tuple):
        copied = type(value)(_copy(item, memo) for item in value)
    elif hasattr(value, "detach"):  # a tensor
        copied = value.detach().to("cpu", copy=True)
    else:
        return value
    memo[id(value)] = copied
    return copied


def restore(s: Session, saved: dict) -> dict:
    """Put a checkpoint's states back into session `s`; returns the loop's fields
    (engine.LoopState): epoch, global_step, the interrupted epoch, the best epoch's weights.
    A checkpoint without an EMA (train.ema switched on with --set) starts the average there."""
    ema, source = saved.get("ema") or {}, f"the checkpoint resumed in {s.run_dir}"
    load_weights(s.model, ema.get("trained", saved["model"]), source)
    if s.ema is not None:  # before "average" was kept, "model" was always the average
        load_weights(s.ema.module, ema.get("average", saved["model"]), source)
        s.ema.steps = ema.get("steps", saved["global_step"])
    s.optimizer.load_state_dict(saved["optimizer"])
    s.schedule.load_state_dict(saved["schedule"])
    if saved["scaler"]:  # empty from a run without fp16: --set train.precision=16 starts one
        s.precision.scaler.load_state_dict(saved["scaler"])
    s.stopper.load_state_dict(saved["early_stopping"])
    s.train_batches.generator.set_state(saved["loader_rng"])
    set_rng_state(saved["rng"])
    partial = saved.get("partial")
    if partial is not None:  # its steps count batches of this many processes
        partial = {**partial, "world_size": saved.get("world_size", 1)}
    best_epoch, best_weights = s.stopper.best_epoch, None
    if best_epoch == saved["epoch"] and partial is None:  # mid-epoch weights are not the best
        best_weights = saved["model"]  # what was validated (loaded into copies above)
    elif best_epoch is not None and (s.run_dir / "best.pt").exists():
        with contextlib.suppress(DltrainError):  # damaged: the end keeps the weights as trained
            best = load(s.run_dir / "best.pt")
            if best["epoch"] == best_epoch and not best.get("partial"):
                best_weights = best["model"]
    return {
        "epoch": saved["epoch"],
        "global_step": saved["global_step"],
        "partial": partial,
        "best_weights": best_weights,
        "weights": ema.get("weights", "ema") if s.ema is not None else None,
    }


@dataclass
class Saved:
    """A checkpoint read back: where it is, what it holds, its config with overrides."""

    path: Path
    payload: dict
    cfg: Config
    notes: list[str] = field(default_factory=list)  # e.g. a damaged last.pt passed over

    @property
    def info(self):
        """The data as the saved model saw it (dltrain.data.DataInfo)."""
        from dltrain.data import DataInfo

        return DataInfo.from_dict(self.payload["data_info"])

    def model(self):
        """The saved model with its weights, in eval mode on the config's device; the device."""
        from dltrain.models import build_model
        from dltrain.runtime import resolve_device

        device = resolve_device(self.cfg.device)
        model = build_model(self.info, self.cfg.model, weights=False)
        load_weights(model, self.payload["model"], self.path)
        return model.to(device).eval(), device

    def check_data(self, found) -> None:
        """Refuse data (a DataInfo, as built from the config) other than the model's: an image
        folder that --set data.root points at may hold other classes or image sizes."""
        saved = self.info
        for what, have, want in (
            ("classes", found.class_names, saved.class_names),
            ("channels", found.channels, saved.channels),
            ("image size", found.image_size, saved.image_size),
        ):
            if have != want:
                raise DltrainError(
                    f"data.root {self.cfg.data.root} holds {what} {_shown(have)}, {self.path} "
                    f"was trained on {_shown(want)}: point data.root at the data it was "
                    "trained on"
                )


def _shown(value) -> str:
    """Class names (the first five and the count), an image size (28x28) or a number."""
    if isinstance(value, list):
        more = f", ... ({len(value)} in all)" if len(value) > 5 else ""
        return "[" + ", ".join(value[:5]) + more + "]"
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def open_saved(
    target: str | Path, overrides: list[str] = (), run_folder: bool = False, purpose: str = "eval"
) -> Saved:
    """The one way from a checkpoint to a runnable thing: checkpoint -> its config with `--set`
    overrides (`--device` is one: device=cpu) -> data info -> model with weights. `run_folder`
    (resume) also takes a run's folder: its last.pt, or an intact best.pt if last.pt is not.
    `purpose` (eval, predict, export, finetune, resume) says which overrides the checkpoint
    can take (config.changes): others are refused here, before anything is built or written."""
    if run_folder:
        saved, path, notes = find_resume(target)
    else:
        path, notes = Path(target), []
        saved = load(path)
    cfg = from_dict(saved["config"], f"{path} (config)", overrides)
    if overrides:
        check_changes(from_dict(saved["config"], f"{path} (config)"), cfg, purpose, str(path))
    return Saved(path, saved, cfg, notes)


def load_weights(model, state: dict, source: str | Path) -> None:
    """`model.load_state_dict(state)`, a mismatch one line naming `source`: the last line of
    defence behind `check_changes`, which refuses the overrides that would cause one."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise DltrainError(
            f"{source}: its weights do not fit the model its config builds "
            f"({lines[1] if len(lines) > 1 else lines[0]})"
        ) from None


def at(payload: dict) -> str:
    """Where a checkpoint is in its run: "epoch 3", or "epoch 4, step 20 (mid-epoch)" for one
    written when training stopped inside an epoch (`partial`)."""
    partial = payload.get("partial")
    if partial:
        return f"epoch {partial['epoch']}, step {partial['steps']} (mid-epoch)"
    return f"epoch {payload['epoch']}"
