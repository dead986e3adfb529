"""Throughput as a user measures it: whole `dltrain train` processes against a hand-written loop,
each its own process, on files in the real on-disk formats.

For each workload, each round runs four processes: dltrain with train.epochs 1 and 3, and the
hand loop with 1 and 3 epochs (in turns: dltrain first in even rounds, the hand loop first in
odd ones). The marginal throughput of a way is 2 x N / (wall(3 epochs) - wall(1 epoch)), so
start-up (imports, reading the files, building) cancels out and what is left is what each extra
epoch costs, all of dltrain's per-epoch work included (validation, the eval-mode train subset,
metrics, checkpoints, the epoch line). The ratio dltrain / hand is taken per round; the median
over the rounds is the figure. Peak memory (max RSS of the process, from wait4) is compared too.

Workloads (the issue's):
  mlp  configs/mnist_mlp.yaml --set data.batch_size=32 --set data.val_split=0.01 on 60,000
       random-pixel MNIST IDX files; the hand loop: preloaded normalized tensors, slicing a
       shuffled index, Adam 3e-4, batch 32, the same 784-200-10 MLP (dltrain's build_model).
  cnn  configs/cifar_cnn.yaml (augmentation off in both) at batch 128 on 10,000 CIFAR-format
       images; the same hand loop around the course CNN.
Pixel content does not change speed, so the files hold random pixels.

Run: .venv/bin/python bench/cli_throughput.py [--rounds 5] [--workload mlp|cnn|all]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.formats import write_cifar, write_idx  # noqa: E402

HAND = """
import sys, torch
from torch import nn
from torchvision import datasets
from dltrain.config import validate
from dltrain.data import DataInfo
from dltrain.models import build_model

kind, root, epochs, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
if kind == "mlp":
    data = datasets.MNIST(root, train=True, download=False)
    x, y, model = data.data.unsqueeze(1), data.targets, {"name": "mlp", "hidden": [200]}
    mean, std = [0.1307], [0.3081]
else:
    data = datasets.CIFAR10(root, train=True, download=False)
    x = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(data.targets)
    model = {"name": "cnn", "channels": [32, 64, 128], "dropout": 0.2}
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
c = x.shape[1]
m, s = torch.tensor(mean).view(1, c, 1, 1), torch.tensor(std).view(1, c, 1, 1)
inputs = (x.float() / 255 - m) / s
info = DataInfo("hand", [str(i) for i in range(10)], c, tuple(x.shape[2:]), mean, std)
net = build_model(info, validate({"model": model}).model)
optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)
criterion = nn.CrossEntropyLoss()
net.train()
for _ in range(epochs):
    order = torch.randperm(len(y))
    for first in range(0, len(y), batch):
        index = order[first : first + batch]
        optimizer.zero_grad(set_to_none=True)
        criterion(net(inputs[index]), y[index]).backward()
        optimizer.step()
"""

WORKLOADS = {
    "mlp": {
        "config": "configs/mnist_mlp.yaml",
        "images": 60_000,
        "batch": 32,
        "sets": ["data.batch_size=32", "data.val_split=0.01"],
    },
    "cnn": {
        "config": "configs/cifar_cnn.yaml",
        "images": 10_000,
        "batch": 128,
        "sets": [
            "data.batch_size=128",
            "data.val_split=0.01",
            "data.augment.random_crop=0",
            "data.augment.hflip=false",
            "train.early_stopping.patience=null",
        ],
    },
}


def write_data(root: Path, kind: str, images: int) -> None:
    rng = np.random.default_rng(0)
    if kind == "mlp":
        pixels = rng.integers(0, 256, (images + 1000, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, images + 1000, dtype=np.uint8)
        train, test = (pixels[:images], labels[:images]), (pixels[images:], labels[images:])
        write_idx(root, "MNIST", train, test)
    else:
        write_cifar(root, 10, images, 1000)


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def measure(kind: str, rounds: int, tmp: Path) -> None:
    w = WORKLOADS[kind]
    data = tmp / kind
    write_data(data, kind, w["images"])
    hand = tmp / "hand.py"
    hand.write_text(HAND)
    sets = [a for item in w["sets"] + [f"data.root={data}", "data.download=false"]
            for a in ("--set", item)]  # fmt: skip

    def dltrain(epochs: int, r: int) -> list[str]:
        out = ["--out", str(tmp / f"{kind}-{r}-{epochs}"), "--force", "--quiet"]
        return [sys.executable, "-m", "dltrain", "train", w["config"], *sets,
                "--set", f"train.epochs={epochs}", "--device", "cpu", *out]  # fmt: skip

    def by_hand(epochs: int, r: int) -> list[str]:
        return [sys.executable, str(hand), kind, str(data), str(epochs), str(w["batch"])]

    ratios, rates, memory = [], {"dltrain": [], "hand": []}, {"dltrain": [], "hand": []}
    for r in range(rounds):
        ways = [("dltrain", dltrain), ("hand", by_hand)]
        results = {}
        for name, way in ways if r % 2 == 0 else ways[::-1]:
            one, mem1 = timed(way(1, r), ROOT)
            three, mem3 = timed(way(3, r), ROOT)
            results[name] = 2 * w["images"] / (three - one)
            memory[name].append(max(mem1, mem3))
        for name in results:
            rates[name].append(results[name])
        ratios.append(results["dltrain"] / results["hand"])
        print(
            f"  {kind} round {r + 1}: dltrain {results['dltrain']:,.0f}/s  hand "
            f"{results['hand']:,.0f}/s  dltrain/hand {ratios[-1]:.3f}",
            flush=True,
        )
    mem = {name: statistics.median(values) for name, values in memory.items()}
    print(
        f"{kind}: marginal samples/s, median of {rounds} rounds: dltrain "
        f"{statistics.median(rates['dltrain']):,.0f}, hand {statistics.median(rates['hand']):,.0f}"
        f"; dltrain/hand median {statistics.median(ratios):.3f} (per round: "
        f"{' '.join(f'{x:.2f}' for x in ratios)}); peak RSS dltrain {mem['dltrain']:.0f} MiB, "
        f"hand {mem['hand']:.0f} MiB ({mem['dltrain'] / mem['hand']:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workload", choices=["mlp", "cnn", "all"], default="all")
    args = parser.parse_args()
    kinds = ["mlp", "cnn"] if args.workload == "all" else [args.workload]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            measure(kind, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
