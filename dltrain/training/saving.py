"""A run's checkpoints: what one holds (`payload`), when they are written (`keep`, `flush`,
with last.pt the one commit point), best.pt put right after a crash (`repair_best`), and a run
restored from one (`restore`). The files are written by files.py, read back by checkpoint.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dltrain import __version__, files
from dltrain.errors import DltrainError
from dltrain.files import write_failure
from dltrain.training.checkpoint import FORMAT, load, load_weights
from dltrain.training.epoch import Progress

if TYPE_CHECKING:
    from dltrain.training.session import Session


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


def payload(run: Session, loop, row: dict) -> dict:
    """A checkpoint of session `run` at `loop` (loop.LoopState): enough to evaluate, predict,
    finetune and resume exactly. "model" holds the weights the epoch validated better: with
    train.ema, the average or the trained weights (`loop.weights`), what eval, predict, export
    and finetune read; "ema" holds both and the choice, to resume. A tensor held twice is
    stored once (torch.save keeps one copy of each storage)."""
    ema, trained = run.ema, run.model.state_dict()
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
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "scaler": run.precision.scaler.state_dict(),
        "early_stopping": run.stopper.state_dict(),
        "best_metric": run.stopper.best,
        "rng": rng_state(),
        "loader_rng": run.train_batches.generator.get_state(),
        "config": run.cfg.model_dump(mode="json"),
        "data_info": run.info.to_dict(),
        "class_names": list(run.info.class_names),
        "metrics": row,
        "parent": run.parent,
        "partial": loop.partial.to_dict() if loop.partial else None,
        "world_size": run.world_size,
    }


def keep(run: Session, loop, row: dict, names: list[str], now: bool = False) -> None:
    """Checkpoint the run as each of `names` (last.pt, best.pt): written once checkpoint.interval
    seconds of training have passed since the last write (0: every epoch), or `now`; until then
    a copy on the CPU waits in `loop.pending`, and the next write takes it along. Distributed,
    rank 0 alone writes."""
    if not run.files.write:
        return
    due = now or time.perf_counter() - loop.written >= run.cfg.checkpoint.interval
    if names:
        saved = payload(run, loop, row)
        loop.pending.update(dict.fromkeys(names, saved if due else _copy(saved)))
    if due:  # also when this epoch adds nothing: what waits (an earlier best.pt) is written
        flush(run, loop)


def flush(run: Session, loop) -> None:
    """Write the checkpoints waiting in memory, last.pt the one commit point: a best.pt of an
    earlier epoch is first written beside the current one (.best-<epoch>.pt), then last.pt,
    whose early-stopping state names the best epoch, then the new best takes the name best.pt
    (a link to last.pt when last.pt is the best). A crash at any instant leaves the previous
    pair, or a new last.pt from which `repair_best` (on --resume) puts best.pt right. A failed
    write (a full disk) leaves the previous pair and is one line."""
    last, best = loop.pending.get("last.pt"), loop.pending.get("best.pt")
    folder, staged, committed = run.run_dir, None, last is None
    try:
        if best is not None and last is not None and best is not last:
            staged = folder / f".best-{best['epoch']}.pt"
            files.save(best, staged)  # a new file: the best.pt the current last.pt names stays
        if last is not None:
            files.save(last, folder / "last.pt")
            committed = True
        if staged is not None:
            os.replace(staged, folder / "best.pt")
        elif best is not None and best is last:
            files.link(folder / "last.pt", folder / "best.pt")
        elif best is not None:  # checkpoint.save_last: false
            files.save(best, folder / "best.pt")
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
            files.link(folder / "last.pt", path)
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


def restore(run: Session, saved: dict) -> dict:
    """Put a checkpoint's states back into session `run`; returns the loop's fields
    (loop.LoopState): epoch, global_step, the interrupted epoch, the best epoch's weights.
    A checkpoint without an EMA (train.ema switched on with --set) starts the average there."""
    ema, source = saved.get("ema") or {}, f"the checkpoint resumed in {run.run_dir}"
    load_weights(run.model, ema.get("trained", saved["model"]), source)
    if run.ema is not None:  # before "average" was kept, "model" was always the average
        load_weights(run.ema.module, ema.get("average", saved["model"]), source)
        run.ema.steps = ema.get("steps", saved["global_step"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.schedule.load_state_dict(saved["schedule"])
    if saved["scaler"]:  # empty from a run without fp16: --set train.precision=16 starts one
        run.precision.scaler.load_state_dict(saved["scaler"])
    run.stopper.load_state_dict(saved["early_stopping"])
    run.train_batches.generator.set_state(saved["loader_rng"])
    set_rng_state(saved["rng"])
    partial = saved.get("partial")
    if partial is not None:  # its steps count batches of this many processes
        partial = Progress.from_dict({**partial, "world_size": saved.get("world_size", 1)})
    best_epoch, best_weights = run.stopper.best_epoch, None
    if best_epoch == saved["epoch"] and partial is None:  # mid-epoch weights are not the best
        best_weights = saved["model"]  # what was validated (loaded into copies above)
    elif best_epoch is not None and (run.run_dir / "best.pt").exists():
        with contextlib.suppress(DltrainError):  # damaged: the end keeps the weights as trained
            best = load(run.run_dir / "best.pt")
            if best["epoch"] == best_epoch and not best.get("partial"):
                best_weights = best["model"]
    return {
        "epoch": saved["epoch"],
        "global_step": saved["global_step"],
        "partial": partial,
        "best_weights": best_weights,
        "weights": ema.get("weights", "ema") if run.ema is not None else None,
    }
