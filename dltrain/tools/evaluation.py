"""`dltrain eval`: measure a checkpoint, rebuilt from itself alone (resolved config, data info,
weights). Every look at the test split is appended to the run's `test_ledger.jsonl`, so a run
shows how often its test set has been used (the course: select on validation, test once)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import torch

from dltrain import files
from dltrain.data import NO_DOWNLOAD, DataInfo, make_loader
from dltrain.errors import DltrainError
from dltrain.training import checkpoint
from dltrain.training.epoch import evaluate
from dltrain.training.runtime import apply_speedups, precision_tools
from dltrain.training.session import model_data

MISTAKES_SHOWN = 36  # the most confidently wrong images drawn in mistakes-<split>.png


def metrics_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"eval-{split}.json"


def confusion_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"confusion-{split}.csv"


def picture_paths(folder: str | Path, split: str) -> tuple[Path, Path]:
    """confusion-<split>.png and mistakes-<split>.png in eval's output folder."""
    folder = Path(folder)
    return folder / f"confusion-{split}.png", folder / f"mistakes-{split}.png"


def output_folder(ckpt: str | Path, out: str | Path | None = None) -> Path:
    """Where eval writes: `out` (dltrain eval --out), else beside the checkpoint."""
    return Path(ckpt).parent if out is None else Path(out)


def _write(folder: Path, split: str, result: dict, names: list[str], confusion: list) -> None:
    """eval-<split>.json and confusion-<split>.csv in `folder` (made if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DltrainError(f"--out {folder}: cannot make it: {err.strerror or err}") from None
    files.write_json(metrics_path(folder, split), result)
    # Rows are true classes, columns predicted classes; the header row names the columns.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *names])
    writer.writerows([name, *counts] for name, counts in zip(names, confusion, strict=True))
    text = buffer.getvalue().encode()
    files.atomic_write(confusion_path(folder, split), lambda handle: handle.write(text))


def evaluate_checkpoint(
    path: str | Path,
    split: str,
    overrides: list[str] = (),
    tta: str | None = None,
    warn: Callable[[str], None] = lambda text: None,
    out: str | Path | None = None,
) -> dict:
    """Measure one split (`overrides`: `--set` strings, `--device` among them) and write the
    result to `out` (made if missing; default beside the checkpoint): loss, acc, top5 (over 5
    classes), `confusion[true][pred]`, per-class precision, recall and F1, macro-F1 and
    balanced accuracy; with test-time augmentation (`tta`, else the config's eval.tta) the same
    under "tta"; `test_uses`: how many times this run's test set has been measured (the run's
    ledger, beside the checkpoint). The data is read, never downloaded unless `overrides` ask
    for it (data.download=true): see NO_DOWNLOAD.

    Then the pictures (`picture_paths`), from the pass without TTA as the confusion matrix:
    a picture that cannot be drawn is one `warn` line, and the metrics are written already."""
    saved = checkpoint.open_saved(path, [NO_DOWNLOAD, *overrides], purpose="eval")
    cfg, path, tta = saved.cfg, saved.path, tta or saved.cfg.eval.tta
    folder = output_folder(path, out)
    if folder.exists() and not folder.is_dir():
        raise DltrainError(f"--out {folder} is a file; give a folder for eval's files")
    model, device = saved.model()
    data, splits = model_data(cfg, device)
    saved.check_data(splits.info)
    batches = make_loader(splits, split, data, device)
    # The same memory format and precision as training's validation, so the numbers match.
    net = apply_speedups(cfg, model, device, [batches], compile_ok=False)
    autocast = precision_tools(device, cfg.train.precision).autocast
    mistakes = Mistakes()
    metrics = evaluate(net, batches, details=True, autocast=autocast, keep=mistakes)
    names, confusion = list(splits.info.class_names), metrics["confusion"]
    per_class = class_metrics(confusion, names)
    result = {
        "split": split,
        "dataset": cfg.data.dataset,
        "samples": splits.sizes[split],
        "epoch": saved.payload["epoch"],  # epochs finished; "at" also says mid-epoch
        "at": checkpoint.at(saved.payload),
        "checkpoint": str(path),
        "sha256": files.file_sha256(path),
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
    _write(folder, split, result, names, confusion)
    for problem in draw_pictures(result, mistakes.worst(), splits.info, folder):
        warn(problem)
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


class Wrong(NamedTuple):
    """Wrongly classified samples, most confident first: images as the model received them
    (on the CPU), true and predicted classes, the predicted class's probability."""

    images: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor
    probs: torch.Tensor


class Mistakes:
    """The `limit` most confidently wrong samples of an evaluation pass, chosen as the batches
    go by (evaluate's `keep`): memory holds `limit` images, never the split. They stay on the
    model's device until `worst`, so the pass takes no host sync per batch."""

    def __init__(self, limit: int = MISTAKES_SHOWN):
        self.limit, self.kept = limit, None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor):
        probs, predicted = logits.float().softmax(1).max(1)
        # Right answers score -1, below any probability: dropped by `worst`.
        score = probs.masked_fill(predicted == labels, -1.0)
        batch = (images, labels, predicted, probs, score)
        if self.kept is not None:
            batch = tuple(torch.cat(pair) for pair in zip(self.kept, batch, strict=True))
        top = batch[-1].topk(min(self.limit, len(batch[-1]))).indices
        self.kept = tuple(part.index_select(0, top) for part in batch)

    def worst(self) -> Wrong:
        """The wrong ones kept, the most confident first."""
        if self.kept is None:
            return Wrong(*(torch.empty(0) for _ in range(4)))
        wrong = self.kept[-1] >= 0
        return Wrong(*(part[wrong].cpu() for part in self.kept[:-1]))


def draw_pictures(result: dict, wrong: Wrong, info: DataInfo, folder: Path) -> list[str]:
    """confusion-<split>.png and mistakes-<split>.png; returns a line for each that could not
    be drawn (and removes its older version, so no stale picture stays beside new metrics)."""
    from dltrain.reporting.pictures import plot_confusion, plot_images, short_name

    split, names = result["split"], [short_name(name) for name in result["class_names"]]
    confusion_png, mistakes_png = picture_paths(folder, split)
    title = f"{split}: accuracy {result['acc']:.4f}, {result['samples']} samples"
    problems = []

    def confusion():
        heading = f"{title}; rows: true class, each summing to 1"
        plot_confusion(result["confusion"], result["class_names"], heading, confusion_png)

    def mistakes():
        errors = result["samples"] - sum(row[i] for i, row in enumerate(result["confusion"]))
        captions = [
            f"true {names[true]} → {names[guess]} ({prob:.2f})"
            for true, guess, prob in zip(wrong.labels, wrong.predicted, wrong.probs, strict=True)
        ]
        shown = f"the {len(captions)} most confident of {errors} mistakes" if errors else ""
        images = info.unnormalize(wrong.images) if captions else wrong.images
        empty = f"no mistakes: all {result['samples']} images classified right"
        plot_images(images, captions, f"{title}: {shown or 'no mistakes'}", mistakes_png, empty)

    for path, draw in ((confusion_png, confusion), (mistakes_png, mistakes)):
        try:
            draw()
        except Exception as err:  # noqa: BLE001 - the metrics are written; say so and go on
            with suppress(OSError):
                path.unlink(missing_ok=True)
            problems.append(f"could not draw {path}: {err}")
    return problems
