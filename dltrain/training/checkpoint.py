"""Checkpoints: `load` (a dltrain checkpoint, checked), `find_resume`, and `open_saved`, the one
way back from a checkpoint for resume, eval, predict, export and finetune. What a run's
checkpoint holds and when it is written: saving.py; how any file is written and read: files.py.
Checkpoints hold only tensors and plain values (files.read): loading never runs code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dltrain.config import Config, check_changes, from_dict
from dltrain.errors import DltrainError
from dltrain.files import read

if TYPE_CHECKING:
    pass

FORMAT = "dltrain-checkpoint"


def load(path: str | Path) -> dict:
    """Load a dltrain checkpoint safely; every failure is a one-line DltrainError."""
    path = Path(path)
    if path.is_dir():
        raise DltrainError(f"{path} is a folder; give a checkpoint file such as {path}/best.pt")
    if not path.is_file():
        raise DltrainError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:
        start = handle.read(2)
    # torch.save writes a zip (PK), older torch a pickle (0x80): a file of another name that is
    # neither never was a checkpoint (a .pt file that is neither is a damaged one: read says so).
    torch_name = path.suffix in (".pt", ".pth", ".ckpt", ".bin")
    if start and start != b"PK" and start[:1] != b"\x80" and not torch_name:
        kind = "a YAML config" if path.suffix in (".yaml", ".yml") else "not a PyTorch file"
        raise DltrainError(
            f"{path} is {kind}, not a checkpoint; give a run's checkpoint, such as RUN/best.pt"
        )
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
        from dltrain.training.runtime import resolve_device

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


def _older(config: dict) -> dict:
    """A checkpoint's config as the version that wrote it meant it: before data.resize_mode,
    every resize was a squash."""
    data = config.get("data") or {}
    if "resize_mode" not in data:
        return {**config, "data": {**data, "resize_mode": "squash"}}
    return config


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
    config = _older(saved["config"])
    cfg = from_dict(config, f"{path} (config)", overrides)
    if overrides:
        check_changes(from_dict(config, f"{path} (config)"), cfg, purpose, str(path))
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
