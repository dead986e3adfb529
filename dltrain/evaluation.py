"""`dltrain eval`: measure a checkpoint, rebuilt from itself alone (resolved config, data info,
weights). Every look at the test split is appended to the run's `test_ledger.jsonl`, so a run
shows how often its test set has been used (the course: select on validation, test once)."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime
from pathlib import Path

from dltrain import checkpoint
from dltrain.data import build_splits, make_loader
from dltrain.epoch import evaluate
from dltrain.errors import DltrainError
from dltrain.models import needs_rgb
from dltrain.runtime import apply_speedups, precision_tools


def metrics_path(ckpt: str | Path, split: str) -> Path:
    return Path(ckpt).parent / f"eval-{split}.json"


def confusion_path(ckpt: str | Path, split: str) -> Path:
    return Path(ckpt).parent / f"confusion-{split}.csv"


def evaluate_checkpoint(path: str | Path, split: str, overrides: list[str] = ()) -> dict:
    """Measure one split (`overrides`: `--set` strings, `--device` among them) and write the
    result beside the checkpoint. `evaluate` adds loss, acc, top5 (over 5 classes) and
    `confusion[true][pred]`; `test_uses`: how many times this run's test set has been measured."""
    saved = checkpoint.open_saved(path, overrides)
    cfg, path = saved.cfg, saved.path
    model, device = saved.model()
    splits = build_splits(cfg.data, cfg.seed, rgb=needs_rgb(cfg.model))
    batches = make_loader(splits, split, cfg.data, device)
    # The same memory format and precision as training's validation, so the numbers match.
    net = apply_speedups(cfg, model, device, [batches], compile_ok=False)
    autocast = precision_tools(device, cfg.train.precision).autocast
    metrics = evaluate(net, batches, details=True, autocast=autocast)
    names, confusion = list(splits.info.class_names), metrics["confusion"]
    # Per class: correct, total (true samples of that class), their ratio (None: no samples).
    per_class = []
    for index, (name, counts) in enumerate(zip(names, confusion, strict=True)):
        correct, total = counts[index], sum(counts)
        acc = correct / total if total else None
        per_class.append({"class": name, "correct": correct, "total": total, "acc": acc})
    result = {
        "split": split,
        "samples": splits.sizes[split],
        "epoch": saved.payload["epoch"],
        "checkpoint": str(path),
        "sha256": checkpoint.file_sha256(path),
        **metrics,
        "per_class": per_class,
        "class_names": names,
    }
    if split == "test":
        result["test_uses"] = record_test_use(path, result)
    checkpoint.write_json(metrics_path(path, split), result)
    # Rows are true classes, columns predicted classes; the header row names the columns.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *names])
    writer.writerows([name, *counts] for name, counts in zip(names, confusion, strict=True))
    text = buffer.getvalue().encode()
    checkpoint.atomic_write(confusion_path(path, split), lambda handle: handle.write(text))
    return result


def record_test_use(ckpt: Path, result: dict) -> int:
    """Append one line to the run's test ledger; returns how many uses it now records."""
    ledger = ckpt.parent / "test_ledger.jsonl"
    entry = {
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "checkpoint": str(ckpt),
        **{key: result[key] for key in ("sha256", "epoch", "acc")},
    }
    try:
        with open(ledger, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with open(ledger, encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError as err:
        reason = err.strerror or err
        raise DltrainError(f"could not record the test use in {ledger}: {reason}") from None
