"""channels_last and torch.compile for the course's CIFAR CNN on this CPU, side by side.

Trains the cnn (32-64-128, batch 128, Adam 3e-4) on CIFAR-shaped in-memory data through
dltrain's own loop, four ways, alternating them over rounds: plain, channels_last,
torch.compile, both. Prints samples/s (median, min-max) and the ratio to plain; the winner on
this machine is what `train.compile: auto` / `train.channels_last: auto` choose on a CPU.
Run: .venv/bin/python bench/cpu_variants.py [--images 4096] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dltrain.config import DataConfig, ModelConfig, TrainConfig
from dltrain.data import build_splits, make_loader
from dltrain.models import build_model
from dltrain.training.epoch import train_one_epoch
from dltrain.training.runtime import set_threads

VARIANTS = {
    "plain": (False, False),
    "channels_last": (True, False),
    "compile": (False, True),
    "both": (True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_threads()
    data = DataConfig(
        dataset="fake",
        batch_size=128,
        val_split=1,
        fake={"train_size": args.images + 1, "test_size": 1, "image_size": 32},
    )
    splits = build_splits(data, seed=0)
    cpu = torch.device("cpu")
    info = splits.info
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    compiled = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up (and compiles)
        for name, (channels_last, compile_) in VARIANTS.items():
            torch.manual_seed(0)
            model = build_model(info, ModelConfig(name="cnn", channels=[32, 64, 128]))
            loader = make_loader(splits, "train", data, cpu, seed=round_)
            if channels_last:
                model.to(memory_format=torch.channels_last)
                loader.memory_format = torch.channels_last
            net = model
            if compile_:
                net = compiled.setdefault(name, torch.compile(model))
                net._orig_mod.load_state_dict(model.state_dict())
                model = net._orig_mod
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
            start = time.perf_counter()
            train_one_epoch(net, loader, optimizer, nn.CrossEntropyLoss(), TrainConfig())
            if round_:
                rates[name].append(len(splits.train) / (time.perf_counter() - start))
    plain = statistics.median(rates["plain"])
    print(
        f"course CNN, {args.images} CIFAR-shaped images, batch 128, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds (after warm-up)"
    )
    print(f"{'variant':<14}{'samples/s':>12}{'min-max':>20}{'vs plain':>10}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"{name:<14}{median:>12,.0f}{f'{min(values):,.0f}-{max(values):,.0f}':>20}"
            f"{median / plain:>9.2f}x"
        )


if __name__ == "__main__":
    main()
