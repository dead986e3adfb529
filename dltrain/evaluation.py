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
from dltrain.data import NO_DOWNLOAD, build_splits, for_model, make_loader
from dltrain.epoch import evaluate
from dltrain.errors import DltrainError
from dltrain.models import model_input
from dltrain.runtime import apply_speedups, precision_tools


def metrics_path(ckpt: str | Path, split: str) -> Path:
    return Path(ckpt).parent / f"eval-{split}.json"


def confusion_path(ckpt: str | Path, split: str) -> Path:
    return Path(ckpt).parent / f"confusion-{split}.csv"


def evaluate_checkpoint(
    path: str | Path, split: str, overrides: list[str] = (), tta: str | None = None
) -> dict:
    """Measure one split (`overrides`: `--set` strings, `--device` among them) and write the
    result beside the checkpoint: loss, acc, top5 (over 5 classes), `confusion[true][pred]`,
    per-class precision, recall and F1, macro-F1 and balanced accuracy; with test-time
    augmentation (`tta`, else the config's eval.tta) the same under "tta"; `test_uses`: how
    many times this run's test set has been measured. The data is read, never downloaded
    unless `overrides` ask for it (data.download=true): see NO_DOWNLOAD."""
    saved = checkpoint.open_saved(path, [NO_DOWNLOAD, *overrides], purpose="eval")
    cfg, path, tta = saved.cfg, saved.path, tta or saved.cfg.eval.tta
    model, device = saved.model()
    wants = model_input(cfg.model)
    data = for_model(cfg.data, wants)
    splits = build_splits(data, cfg.seed, rgb=wants.rgb)
    saved.check_data(splits.info)
    batches = make_loader(splits, split, data, device)
    # The same memory format and precision as training's validation, so the numbers match.
    net = apply_speedups(cfg, model, device, [batches], compile_ok=False)
    autocast = precision_tools(device, cfg.train.precision).autocast
    metrics = evaluate(net, batches, details=True, autocast=autocast)
    names, confusion = list(splits.info.class_names), metrics["confusion"]
    per_class = class_metrics(confusion, names)
    result = {
        "split": split,
        "dataset": cfg.data.dataset,
        "samples": splits.sizes[split],
        "epoch": saved.payload["epoch"],  # epochs finished; "at" also says mid-epoch
        "at": checkpoint.at(saved.payload),
        "checkpoint": str(path),
        "sha256": checkpoint.file_sha256(path),
        **metrics,
        **_means(per_class),
        "per_class": per_class,
        "class_names": names,
    }
    if tta != "none":
        seen = evaluate(net, batches, details=True, autocast=autocast, tta=tta)
        seen = {**seen, **_means(class_metrics(seen.pop("confusion"), names))}
        result["tta"] = {"mode": tta, **seen}
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


def class_metrics(confusion: list[list[int]], names: list[str]) -> list[dict]:
    """Per class: correct, total (its true samples), acc (= recall), precision (of the samples
    predicted as it; 0 when none are) and F1. A class without samples in the split has None
    for acc, recall and F1."""
    rows = []
    for index, (name, counts) in enumerate(zip(names, confusion, strict=True)):
        correct, total = counts[index], sum(counts)
        predicted = sum(row[index] for row in confusion)
        recall = correct / total if total else None
        precision = correct / predicted if predicted else (0.0 if total else None)
        f1 = None
        if recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        row = {"class": name, "correct": correct, "total": total, "acc": recall}
        rows.append({**row, "precision": precision, "recall": recall, "f1": f1})
    return rows


def _means(per_class: list[dict]) -> dict:
    """Macro-F1 and balanced accuracy (mean recall), over the classes the split has."""
    present = [row for row in per_class if row["total"]]
    return {
        "macro_f1": sum(row["f1"] for row in present) / len(present),
        "balanced_acc": sum(row["recall"] for row in present) / len(present),
    }


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
