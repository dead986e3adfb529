"""Fast in-memory path vs the per-sample PIL path, training the course's MNIST MLP.

Writes 60,000 MNIST-format images (real digits, upscaled and repeated) as IDX files, then
trains the 784-200-10 MLP (Adam 3e-4, batch 32) for one epoch two ways, alternating:
  pil:  torchvision MNIST + ToTensor + Normalize + DataLoader(batch_size=32, shuffle=True)
  fast: dltrain's loader (one uint8 tensor, batch-wise normalization)
and prints samples/s of each and their ratio. Run: .venv/bin/python bench/fast_path.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dltrain.config import DataConfig, ModelConfig  # noqa: E402
from dltrain.data import build_splits, make_loader  # noqa: E402
from dltrain.models import build_model  # noqa: E402
from tests.formats import digits_as_mnist, write_idx  # noqa: E402

N_TRAIN, BATCH, ROUNDS = 60_000, 32, 2


def train_epoch(model, batches) -> int:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_fn = nn.CrossEntropyLoss()
    seen = 0
    for images, labels in batches:
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()
        seen += len(labels)
    return seen


def main() -> None:
    torch.manual_seed(0)
    (images, labels), test = digits_as_mnist(1500, 297)
    reps = -(-N_TRAIN // len(images))
    train = (np.tile(images, (reps, 1, 1))[:N_TRAIN], np.tile(labels, reps)[:N_TRAIN])
    root = Path(tempfile.mkdtemp())
    write_idx(root, "MNIST", train, test)

    from torchvision import datasets, transforms

    pil = datasets.MNIST(
        str(root),
        train=True,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
        ),
    )
    pil_loader = torch.utils.data.DataLoader(pil, batch_size=BATCH, shuffle=True)
    cfg = DataConfig(dataset="mnist", root=str(root), download=False, val_split=1, batch_size=BATCH)
    splits = build_splits(cfg, seed=0)
    fast_loader = make_loader(splits, "train", cfg, torch.device("cpu"))
    info = splits.info

    rates = {"pil": [], "fast": []}
    for _ in range(ROUNDS):
        for name, loader in (("pil", pil_loader), ("fast", fast_loader)):
            model = build_model(info, ModelConfig(name="mlp", hidden=[200]))
            start = time.perf_counter()
            seen = train_epoch(model, loader)
            rates[name].append(seen / (time.perf_counter() - start))
    pil_rate, fast_rate = max(rates["pil"]), max(rates["fast"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {N_TRAIN} images, "
        f"batch {BATCH}, best of {ROUNDS} epochs each"
    )
    print(f"pil path : {pil_rate:10,.0f} samples/s")
    print(f"fast path: {fast_rate:10,.0f} samples/s")
    print(f"fast/pil : {fast_rate / pil_rate:10.2f}x")


if __name__ == "__main__":
    main()
