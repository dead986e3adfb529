"""Class imbalance: what train.class_weights and data.sampler buy on a deliberately imbalanced
image folder, same seeds, same data.

The folder is scikit-learn's handwritten digits written as 8x8 PNGs: a balanced test/ of 50
images per class, and a train/ with the rest, where two classes (3 and 8 by default) keep only
10% of their images. Each way trains the same small CNN on train/ (its validation split
carved out as usual) and is measured once on test/ through `dltrain eval`'s own code: the
recall of the two cut classes, macro-F1 and accuracy, mean ± std over the seeds.

Run: .venv/bin/python bench/imbalance.py [--seeds 3] [--epochs 20] [--keep 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dltrain.config import validate  # noqa: E402
from dltrain.tools.evaluation import evaluate_checkpoint  # noqa: E402
from dltrain.training.engine import fit  # noqa: E402

WAYS = {
    "none": {},
    "class_weights: balanced": {"train": {"class_weights": "balanced"}},
    "sampler: balanced": {"data": {"sampler": "balanced"}},
}


def write_folder(root: Path, cut: list[int], keep: float, test_per_class: int = 50) -> dict:
    """digits as PNGs in root/train/<class>/ and root/test/<class>/; returns train counts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    counts = {}
    for label in range(10):
        images = digits.images[digits.target == label]
        images = images[rng.permutation(len(images))]
        test, train = images[:test_per_class], images[test_per_class:]
        if label in cut:
            train = train[: max(2, round(keep * len(train)))]
        counts[label] = len(train)
        for split, chosen in (("test", test), ("train", train)):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for k, image in enumerate(chosen):
                pixels = (image * 255 / 16).round().astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:03d}.png")
    return counts


def config(root: Path, seed: int, epochs: int, way: dict) -> dict:
    cfg = {
        "name": "imbalance",
        "seed": seed,
        "device": "cpu",
        "data": {"dataset": "imagefolder", "root": str(root), "batch_size": 32, "num_workers": 0},
        "model": {"name": "cnn", "channels": [16, 32]},
        "optim": {"name": "adam", "lr": 3e-3},
        "train": {"epochs": epochs},
    }
    for section, values in way.items():
        cfg[section] = {**cfg[section], **values}
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--keep", type=float, default=0.1, help="share kept of the cut classes")
    parser.add_argument("--cut", type=int, nargs="+", default=[3, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "digits"
        counts = write_folder(root, args.cut, args.keep)
        print(f"train images per class: {counts} (test: 50 per class)")
        results = {way: [] for way in WAYS}
        for seed in range(args.seeds):
            for way, changes in WAYS.items():
                run = Path(tmp) / f"{way}-{seed}".replace(" ", "").replace(":", "")
                fit(validate(config(root, seed, args.epochs, changes)), run)
                metrics = evaluate_checkpoint(run / "best.pt", "test")
                rows = {row["class"]: row for row in metrics["per_class"]}
                minority = statistics.fmean(rows[str(c)]["recall"] for c in args.cut)
                results[way].append((minority, metrics["macro_f1"], metrics["acc"]))
    print(f"{args.seeds} seeds, {args.epochs} epochs, classes {args.cut} kept at {args.keep:.0%}")
    print(f"{'way':26} {'minority recall':>18} {'macro-F1':>16} {'accuracy':>16}")
    for way, rows in results.items():
        cells = []
        for column in zip(*rows, strict=True):
            spread = statistics.stdev(column) if len(column) > 1 else 0.0
            cells.append(f"{statistics.fmean(column):.3f} ± {spread:.3f}")
        print(f"{way:26} {cells[0]:>18} {cells[1]:>16} {cells[2]:>16}")


if __name__ == "__main__":
    main()
