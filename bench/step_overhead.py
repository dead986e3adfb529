"""dltrain's fixed cost per training step, against a hand-written loop, on a model so small
that the step is almost all overhead.

Both train a one-layer model (784 -> 10, SGD) on MNIST-shaped random data at batch 32 for
one epoch, alternated over rounds in one process: (b) a hand loop over a preloaded,
pre-normalized float tensor (batches by advanced indexing), (c) `dltrain.training.engine.
train_one_epoch` over dltrain's uint8 `Batches` (gather, normalize, loss/logit bookkeeping,
NaN watch, the event channel). Prints microseconds per step for each, median over rounds.

Run: .venv/bin/python bench/step_overhead.py [--rounds 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dltrain.config import validate
from dltrain.data import Batches, DataInfo, TensorSplit
from dltrain.training.epoch import Channel, train_one_epoch

N, BATCH = 32_000, 32
MEAN, STD = 0.1307, 0.3081


def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    return net, torch.optim.SGD(net.parameters(), lr=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (N,), generator=generator)
    floats = (images.float() / 255 - MEAN) / STD
    info = DataInfo("bench", [str(i) for i in range(10)], 1, (28, 28), [MEAN], [STD])
    train_cfg = validate({}).train

    def hand() -> float:
        net, optimizer = model()
        loss_fn = nn.CrossEntropyLoss()
        net.train()
        start = time.perf_counter()
        order = torch.randperm(N)
        for first in range(0, N, BATCH):
            index = order[first : first + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(floats[index]), labels[index]).backward()
            optimizer.step()
        return time.perf_counter() - start

    def dltrain() -> float:
        net, optimizer = model()
        batches = Batches(TensorSplit(images, labels), info, BATCH, shuffle=True, seed=0)
        emit = Channel([lambda event: None])  # a listener that hears every step
        start = time.perf_counter()
        train_one_epoch(net, batches, optimizer, nn.CrossEntropyLoss(), train_cfg, emit=emit)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"hand": [], "dltrain": []}
    for _ in range(args.rounds):
        times["hand"].append(hand())
        times["dltrain"].append(dltrain())
    steps = N / BATCH
    per_step = {way: statistics.median(values) / steps * 1e6 for way, values in times.items()}
    print(
        f"one-layer model, batch {BATCH}, {args.threads} thread(s), median of {args.rounds} "
        f"alternated rounds: hand loop {per_step['hand']:.0f} us/step, dltrain "
        f"{per_step['dltrain']:.0f} us/step (dltrain - hand: "
        f"{per_step['dltrain'] - per_step['hand']:+.0f} us)"
    )


if __name__ == "__main__":
    main()
