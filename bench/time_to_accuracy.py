"""Time to accuracy: seconds until validation accuracy reaches 97% on `digits` with the MLP
of configs/digits_mlp.yaml, for dltrain's `fit` against a hand-written loop.

Both start from nothing (data loading included), use the same split (dltrain's own
`build_splits`, so the validation images are the same), the same model (`build_model`:
256-128 MLP, dropout 0.1), Adam at the config's learning rate and its batch size, and
validate after every epoch. The hand loop seeds as dltrain does (global seed before the
model is built, a loader generator seeded alike for the shuffle), so both usually follow
the same trajectory and need the same number of epochs: the time difference is the loop's.
Each way runs once untimed first, so lazy imports (scikit-learn) count for neither.

The clock stops at the end of the first epoch whose validation accuracy reaches the
target: for dltrain at its `epoch` event (after all it does per epoch: evaluation, metrics,
checkpoint writes), for the hand loop right after its validation. Epochs are capped at the
config's 30; a seed that never gets there is "not reached". Seeds alternate the two ways.

Run: .venv/bin/python bench/time_to_accuracy.py [--seeds 5] [--target 0.97]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dltrain.config import Config, load_config  # noqa: E402
from dltrain.data import build_splits  # noqa: E402
from dltrain.models import build_model  # noqa: E402
from dltrain.training.engine import fit  # noqa: E402

CONFIG = ROOT / "configs/digits_mlp.yaml"


def with_dltrain(cfg: Config, target: float) -> tuple[float | None, int]:
    """(seconds, epoch) at the end of the first epoch reaching `target`, else (None, epochs)."""
    reached: list = []

    def progress(event) -> None:
        if type(event).__name__ == "EpochEnd" and not reached and event.row["val_acc"] >= target:
            reached.append((time.perf_counter() - start, event.row["epoch"]))

    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        summary = fit(cfg, Path(run_dir), [progress])
    return reached[0] if reached else (None, summary.epochs_run)


def by_hand(cfg: Config, target: float) -> tuple[float | None, int]:
    """The plain loop: preloaded normalized tensors, shuffled index slices, val each epoch."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    splits = build_splits(cfg.data, cfg.seed)
    mean = torch.tensor(splits.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.info.std).view(1, -1, 1, 1)
    x_train = (splits.train.images.float() / 255 - mean) / std
    x_val = (splits.val.images.float() / 255 - mean) / std
    y_train, y_val = splits.train.labels, splits.val.labels
    model = build_model(splits.info, cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    loss_fn = nn.CrossEntropyLoss()
    n, batch = len(y_train), cfg.data.batch_size
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=shuffle)
        for first in range(0, n, batch):
            index = order[first : first + batch]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x_train[index]), y_train[index]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        if accuracy >= target:
            return time.perf_counter() - start, epoch
    return None, cfg.train.epochs


def show(result: tuple[float | None, int]) -> str:
    seconds, epoch = result
    return f"{seconds:6.2f}s (epoch {epoch:2d})" if seconds is not None else "not reached    "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--target", type=float, default=0.97, help="validation accuracy")
    parser.add_argument("--max-epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # fit() picks its own thread count unless OMP_NUM_THREADS is set: keep every way on ours.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    results = {"dltrain": [], "hand": []}
    warm_up = load_config(CONFIG, ["device=cpu", "train.epochs=1"])
    with_dltrain(warm_up, args.target), by_hand(warm_up, args.target)
    for seed in range(args.seeds):
        overrides = [f"seed={seed}", "device=cpu"]
        if args.max_epochs:
            overrides.append(f"train.epochs={args.max_epochs}")
        cfg = load_config(CONFIG, overrides)
        results["dltrain"].append(with_dltrain(cfg, args.target))
        results["hand"].append(by_hand(cfg, args.target))
    print(
        f"digits, {CONFIG.relative_to(ROOT)} (MLP 256-128, dropout 0.1, Adam "
        f"{cfg.optim.lr:g}, batch {cfg.data.batch_size}, val_split {cfg.data.val_split}), "
        f"CPU, {torch.get_num_threads()} threads; target val acc >= {args.target}, "
        f"at most {cfg.train.epochs} epochs; clock includes data loading and model building"
    )
    print(f"  {'seed':>4}  {'dltrain fit':>20}  {'hand-written loop':>20}")
    for seed in range(args.seeds):
        print(
            f"  {seed:4d}  {show(results['dltrain'][seed]):>20}  {show(results['hand'][seed]):>20}"
        )
    medians = {}
    for way, rows in results.items():
        reached = [(seconds, epoch) for seconds, epoch in rows if seconds is not None]
        if not reached:
            print(f"  {way:8} reached in 0/{len(rows)} seeds")
            continue
        medians[way] = statistics.median(seconds for seconds, _ in reached)
        per_epoch = statistics.median(seconds / epoch for seconds, epoch in reached)
        print(
            f"  {way:8} reached in {len(reached)}/{len(rows)} seeds; median {medians[way]:.2f}s, "
            f"median epoch {statistics.median(epoch for _, epoch in reached):g}, "
            f"median {per_epoch * 1000:.0f} ms per epoch (setup included)"
        )
    if len(medians) == 2:
        print(
            f"  dltrain / hand-written, median seconds: {medians['dltrain'] / medians['hand']:.2f}"
        )


if __name__ == "__main__":
    main()
