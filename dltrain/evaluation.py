"""Measuring a checkpoint: `dltrain eval` (and, later, predict).

Everything is rebuilt from the checkpoint alone: its resolved config, data info and weights.
"""

from __future__ import annotations

from pathlib import Path

from dltrain import checkpoint
from dltrain.config import apply_overrides, validate
from dltrain.data import build_splits, make_loader
from dltrain.engine import evaluate, resolve_device
from dltrain.models import build_model, needs_rgb


def evaluate_checkpoint(
    path: str | Path, split: str, device: str | None = None, overrides: list[str] = ()
) -> dict:
    """Rebuild data and model from a checkpoint alone and measure one split."""
    payload = checkpoint.load(path)
    data = payload["config"]
    overridden = apply_overrides(data, list(overrides), f"{path} (config)")
    if device:
        data["device"] = device
    cfg = validate(data, f"{path} (config)", overridden)
    torch_device = resolve_device(cfg.device)
    splits = build_splits(cfg.data, cfg.seed, rgb=needs_rgb(cfg.model))
    model = build_model(splits.info, cfg.model, weights=False)
    model.load_state_dict(payload["model"])
    model.to(torch_device)
    batches = make_loader(splits, split, cfg.data, torch_device)
    metrics = evaluate(model, batches, details=True)
    return {"split": split, "samples": splits.sizes[split], "epoch": payload["epoch"], **metrics}
