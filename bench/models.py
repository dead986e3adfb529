"""Choosing a model: parameters, MACs at 224 px and CPU images/s of a few families, side by side
with the course's resnet18 (docs/data-and-models.md, "Choosing a model").

Each model is built as dltrain builds it (`build_model`, 1,000 classes, 3x224x224, no
weights: the speed does not depend on them), MACs counted as `dltrain summary` counts them,
then timed in eval mode under no_grad: one untimed batch, then `--batches` batches of
`--batch` images; images/s is the median batch's. Inference only: training costs about 3x.

Run: .venv/bin/python bench/models.py [--batch 8] [--batches 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from importlib.util import find_spec
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dltrain.config import ModelConfig  # noqa: E402
from dltrain.data import DataInfo  # noqa: E402
from dltrain.models import build_model, count_macs, count_parameters  # noqa: E402

MODELS = [
    "resnet18",  # the course's, for reference
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_y_400mf",
    "resnet50",
    "convnext_tiny",
    "vit_b_16",
    "timm/mobilenetv3_small_050",
    "timm/resnet18",
]


def measure(name: str, batch: int, batches: int) -> dict:
    info = DataInfo("imagenet", [str(i) for i in range(1000)], 3, (224, 224), [0.5] * 3, [0.25] * 3)
    model = build_model(info, ModelConfig(name=name, small_input=False)).eval()
    images = torch.randn(batch, 3, 224, 224)
    times = []
    with torch.no_grad():
        model(images)  # warm-up: allocator, kernels
        for _ in range(batches):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    return {
        "params": count_parameters(model),
        "macs": count_macs(model, info),
        "images_per_s": batch / statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, batch {args.batch}, 224 px, eval mode, no_grad")
    print(f"{'model':28} {'params':>12} {'GMACs':>7} {'images/s':>9}")
    for name in MODELS:
        if name.startswith("timm/") and find_spec("timm") is None:
            print(f"{name:28} (needs pip install 'dltrain[timm]')")
            continue
        row = measure(name, args.batch, args.batches)
        print(f"{name:28} {row['params']:>12,} {row['macs'] / 1e9:7.2f} {row['images_per_s']:9.1f}")


if __name__ == "__main__":
    main()
