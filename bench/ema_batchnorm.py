"""EMA of the weights with batch norm: are averaged weights with the live BatchNorm statistics
what hurts early, or the decay itself? dltrain copies the statistics from the trained model;
timm and Ultralytics average them too. Both, with and without the decay's warm-up, on
configs/digits_cnn.yaml with batch norm, 8 epochs, seeds 0-4: the average's validation
accuracy after epoch 1 and epoch 8 (means), and the trained weights' after epoch 8.

Run: .venv/bin/python bench/ema_batchnorm.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dltrain import optim  # noqa: E402
from dltrain.config import load_config  # noqa: E402
from dltrain.reporting.runs import read_metrics  # noqa: E402
from dltrain.training import session  # noqa: E402
from dltrain.training.engine import fit  # noqa: E402


class AveragedStatistics(optim.EMA):
    """The variant: floating-point buffers (running mean and variance) averaged like the
    parameters; num_batches_tracked copied."""

    def __init__(self, model, cfg, steps_per_epoch):
        super().__init__(model, cfg, steps_per_epoch)
        pairs = list(zip(*self.buffers, strict=True))
        stats = [pair for pair in pairs if pair[1].is_floating_point()]
        counts = [pair for pair in pairs if not pair[1].is_floating_point()]
        self.stats = [m for m, _ in stats], [b for _, b in stats]
        self.buffers = [m for m, _ in counts], [b for _, b in counts]

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()  # the parameters; what is left of the buffers copied
        if self.steps % self.every or not self.stats[0]:
            return
        if self.steps <= self.start:
            torch._foreach_copy_(*self.stats)
        else:
            torch._foreach_lerp_(*self.stats, 1.0 - self.decay_at(self.updates(self.steps) - 1))


def measure(warmup: bool, decay: float, averaged: bool, seeds: int) -> tuple[float, ...]:
    session.EMA = AveragedStatistics if averaged else optim.EMA
    first, last, trained = [], [], []
    for seed in range(seeds):
        sets = [f"seed={seed}", "model.batch_norm=true", "train.epochs=8", "device=cpu"]
        sets += [f"train.ema.decay={decay}", f"train.ema.warmup={str(warmup).lower()}"]
        sets += ["checkpoint.save_last=false", "checkpoint.save_best=false"]
        with tempfile.TemporaryDirectory() as folder:
            fit(load_config(ROOT / "configs/digits_cnn.yaml", sets), folder)
            rows = read_metrics(folder)
        first.append(rows[0]["val_acc_ema"])
        last.append(rows[-1]["val_acc_ema"])
        trained.append(rows[-1]["val_acc_raw"])
    return statistics.mean(first), statistics.mean(last), statistics.mean(trained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    seeds = parser.parse_args().seeds
    print(
        "| warm-up | decay | BatchNorm statistics | average, epoch 1 | epoch 8 | trained, epoch 8 |"
    )
    print("|---|---|---|---|---|---|")
    for warmup in (True, False):
        for decay in (0.99, 0.999):
            for averaged in (False, True):
                figures = measure(warmup, decay, averaged, seeds)
                how = "averaged" if averaged else "copied"
                cells = " | ".join(f"{x:.3f}" for x in figures)
                print(f"| {'on' if warmup else 'off'} | {decay} | {how} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
