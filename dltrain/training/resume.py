"""`dltrain train --resume`: what a run folder (or a checkpoint) needs to go on, decided before
anything trains, and the files a crash left out of step put right first.

The cases: a run killed before its first checkpoint starts again from epoch 0 in its folder; a
checkpoint outside any run folder goes on in a new one; a run that is done (all its epochs, or
stopped early by a patience that still holds) only gets the summary a crash kept it from
writing, if any; anything else goes on from its checkpoint. Nothing here prints: the plan
carries its notes for the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dltrain.config import Config, load_config
from dltrain.reporting.listing import describe_run
from dltrain.reporting.runs import never_saved, new_run_dir, read_parent, refuse_if_in_use
from dltrain.training.checkpoint import open_saved
from dltrain.training.early_stopping import EarlyStopping
from dltrain.training.saving import repair_best


@dataclass
class Plan:
    """What `--resume` does: `action` is "train" (from `payload`, or from epoch 0 without one),
    "summary" (a finished run whose summary.json is missing: fit with nothing left to train
    writes it) or "done"."""

    action: str
    cfg: Config
    folder: Path
    payload: dict | None = None
    parent: dict | None = None
    notes: list[str] = field(default_factory=list)


def plan(target: Path, changes: list[str]) -> Plan:
    """The plan for `--resume target` with `--set` `changes`; best.pt put right on the way."""
    folder = target if target.is_dir() else target.parent
    refuse_if_in_use(folder)
    if never_saved(target):
        cfg = load_config(target / "config.yaml", changes)
        note = (
            f"{target}: no checkpoint was written before the run stopped; starting it again "
            "from epoch 0"
        )
        return Plan("train", cfg, target, parent=read_parent(target), notes=[note])
    saved = open_saved(target, changes, run_folder=True, purpose="resume")
    cfg, payload, notes = saved.cfg, saved.payload, list(saved.notes)
    folder = saved.path.parent
    if (folder / "config.yaml").is_file():
        notes += repair_best(folder, payload)
    else:  # a checkpoint copied out of its run: its folder may hold anything
        folder = new_run_dir(cfg)
        notes.append(
            f"{saved.path} is not in a run folder (no config.yaml beside it); continuing the "
            f"run in {folder}"
        )
    done = _done(cfg, payload)
    if done is None:
        return Plan("train", cfg, folder, payload, notes=notes)
    if describe_run(folder)["status"] in ("finished", "stopped_early"):
        return Plan("done", cfg, folder, payload, notes=[*notes, f"{folder}: {done}"])
    notes.append(f"{folder}: the run is done but its summary.json was not written; writing it")
    return Plan("summary", cfg, folder, payload, notes=notes)


def _done(cfg: Config, payload: dict) -> str | None:
    """Why a run has nothing left to train under `cfg`, or None. An early stop holds while the
    patience it ran out of still would; raising the patience (or null) lets the run go on."""
    stopper = EarlyStopping(cfg.train.early_stopping)
    stopper.load_state_dict(payload["early_stopping"])
    epoch, epochs = payload["epoch"], cfg.train.epochs
    if stopper.should_stop:
        return (
            f"the run stopped early at epoch {stopper.stopped_epoch} ({stopper.monitor} did not "
            f"improve for {stopper.wait} epoch{'s' * (stopper.wait != 1)}); nothing to resume: "
            "to train on, raise "
            f"train.early_stopping.patience (now {stopper.patience}) or set it to null with "
            f"--set, and train.epochs (now {epochs}) if it is reached"
        )
    if epoch >= epochs:
        return (
            f"the run finished all its epochs (epoch {epoch} of {epochs}); nothing to resume "
            "(raise train.epochs with --set to train longer)"
        )
    return None
