"""The training loop: `train_one_epoch`, `evaluate` and `fit`, plain functions returning dicts.

The engine never prints: it reports through `progress(event, info)`, which the CLI turns
into a progress bar, log lines and tables.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dltrain import __version__, checkpoint
from dltrain.config import Config
from dltrain.data import Splits, build_splits, make_loader
from dltrain.early_stopping import EarlyStopping
from dltrain.errors import DltrainError
from dltrain.models import build_model, count_parameters, needs_rgb
from dltrain.optim import build_optimizer
from dltrain.runs import RunFiles

Progress = Callable[[str, dict], None]


def _quiet(event: str, info: dict) -> None:
    pass


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; asking for an absent device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DltrainError(
                f"device {name!r} was asked for but CUDA is not available on this machine; "
                "use --device cpu or device: auto"
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DltrainError(
                f"device {name!r} was asked for but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise DltrainError("device 'mps' was asked for but MPS is not available; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict:
    """One pass over the training batches; returns mean loss and accuracy."""
    model.train()
    total_loss = total_correct = None
    seen = 0
    for step, (images, labels) in enumerate(batches, start=1):
        logits = model(images)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Sums stay on the device: no host sync per step.
        batch_loss = loss.detach() * len(labels)
        batch_correct = (logits.detach().argmax(1) == labels).sum()
        if total_loss is None:
            total_loss, total_correct = batch_loss, batch_correct
        else:
            total_loss += batch_loss
            total_correct += batch_correct
        seen += len(labels)
        if on_batch is not None:
            on_batch(step, seen)
    return {"loss": total_loss.item() / seen, "acc": total_correct.item() / seen}


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable, details: bool = False, autocast=contextlib.nullcontext
) -> dict:
    """Mean loss (plain cross-entropy) and accuracy over a whole split, in eval mode.

    With `details`, also top-5 accuracy (when there are more than 5 classes) and the confusion
    matrix (`confusion[true][predicted]` counts) as nested lists.
    """
    model.eval()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    total_correct = torch.zeros((), dtype=torch.long, device=device)
    total_top5 = torch.zeros((), dtype=torch.long, device=device)
    confusion = None
    seen = 0
    for images, labels in batches:
        with autocast():
            logits = model(images)
        logits = logits.float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
        predicted = logits.argmax(1)
        total_correct += (predicted == labels).sum()
        seen += len(labels)
        if details:
            classes = logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(classes * classes, dtype=torch.long, device=device)
            confusion += torch.bincount(labels * classes + predicted, minlength=classes**2)
            if classes > 5:
                top5 = logits.topk(5, dim=1).indices
                total_top5 += (top5 == labels[:, None]).any(1).sum()
    metrics = {"loss": total_loss.item() / seen, "acc": total_correct.item() / seen}
    if details:
        classes = int(len(confusion) ** 0.5)
        metrics["confusion"] = confusion.view(classes, classes).tolist()
        if classes > 5:
            metrics["top5"] = total_top5.item() / seen
    return metrics


def checkpoint_payload(cfg: Config, splits: Splits, model: nn.Module, epoch: int, row: dict):
    return {
        "format": checkpoint.FORMAT,
        "version": __version__,
        "epoch": epoch,
        "model": model.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "data_info": splits.info.to_dict(),
        "class_names": list(splits.info.class_names),
        "metrics": row,
    }


def fit(cfg: Config, run_dir: Path, progress: Progress = _quiet) -> dict:
    """Train per the config, writing config, metrics, summary and checkpoints to `run_dir`."""
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits = build_splits(cfg.data, cfg.seed, rgb=needs_rgb(cfg.model))
    for note in splits.notes:
        progress("note", {"text": note})
    train_batches = make_loader(splits, "train", cfg.data, device, seed=cfg.seed)
    val_batches = make_loader(splits, "val", cfg.data, device)
    model = build_model(splits.info, cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    loss_fn = nn.CrossEntropyLoss()
    stopper = EarlyStopping(cfg.train.early_stopping)
    files = RunFiles(run_dir)
    files.write_config(cfg)
    params = count_parameters(model)
    progress(
        "start",
        {
            "run_dir": str(run_dir),
            "device": str(device),
            "params": params,
            "epochs": cfg.train.epochs,
            "batches": len(train_batches),
            "sizes": splits.sizes,
        },
    )

    best_weights, rows = None, []
    for epoch in range(1, cfg.train.epochs + 1):
        epoch_start = time.perf_counter()
        progress("epoch_start", {"epoch": epoch})
        train = train_one_epoch(
            model,
            train_batches,
            optimizer,
            loss_fn,
            on_batch=lambda step, seen: progress("batch", {"step": step, "seen": seen}),
        )
        val = evaluate(model, val_batches)
        row = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_acc": train["acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - epoch_start,
        }
        rows.append(row)
        improved = stopper.step(row[stopper.monitor], epoch)
        files.append_metrics(row)
        payload = checkpoint_payload(cfg, splits, model, epoch, row)
        if improved:
            best_weights = copy.deepcopy(model.state_dict())
            if cfg.checkpoint.save_best:
                checkpoint.save(payload, run_dir / "best.pt")
        if cfg.checkpoint.save_last:
            checkpoint.save(payload, run_dir / "last.pt")
        progress("epoch", {"row": row, "improved": improved, "epochs": cfg.train.epochs})
        if stopper.should_stop:
            break

    restored = False
    if cfg.train.early_stopping.restore_best and best_weights is not None:
        model.load_state_dict(best_weights)
        restored = stopper.best_epoch != rows[-1]["epoch"]
    reason = stopper.reason + (" (restored)" if stopper.reason and restored else "")
    best_row = next((r for r in rows if r["epoch"] == stopper.best_epoch), rows[-1])
    total = time.perf_counter() - started
    summary = {
        "name": cfg.name,
        "status": "stopped_early" if stopper.should_stop else "finished",
        "stop_reason": reason,
        "epochs_run": len(rows),
        "monitor": stopper.monitor,
        "best_epoch": stopper.best_epoch,
        "best_value": stopper.best,
        "best_metrics": best_row,
        "restored_best": restored,
        "params": params,
        "device": str(device),
        "sizes": splits.sizes,
        "seconds": total,
        "seconds_per_epoch": sum(r["seconds"] for r in rows) / len(rows),
        "version": __version__,
    }
    files.write_summary(summary)
    progress("end", {"summary": summary, "run_dir": str(run_dir)})
    return summary
