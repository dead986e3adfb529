"""Throughput as a user measures it: whole `dltrain train` processes against a hand-written loop,
each its own process, on files in the real on-disk formats.

For each workload, each round runs four processes: dltrain with train.epochs 1 and 3 (--epochs),
and the hand loop with 1 and 3 epochs, interleaved (dltrain first in even rounds, the hand loop
first in odd ones). The marginal throughput of a way is 2 x N / (wall(3 epochs) - wall(1)), so
start-up (imports, reading the files, building) cancels out and what is left is what each extra
epoch costs, all of dltrain's per-epoch work included (validation, the eval-mode train subset,
metrics, checkpoints, the epoch line). The ratio dltrain / hand is taken per round; the median
over the rounds is the figure. On this project's noisy machine, start-up alone varies by
seconds between processes, which two epochs do not outweigh; so a second figure is read off
the same processes: the clock of their `epoch k/E` lines as they arrive on stdout (dltrain's
per-epoch line, printed after all of its per-epoch work; the hand loop prints one after each
epoch), (E - 1) x N / (t(line E) - t(line 1)). Peak memory (max RSS of the process, from
wait4) is compared too.

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
import re
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
datasets.cifar.check_integrity = lambda *args, **kwargs: True  # self-written CIFAR files
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
for epoch in range(1, epochs + 1):
    order = torch.randperm(len(y))
    for first in range(0, len(y), batch):
        index = order[first : first + batch]
        optimizer.zero_grad(set_to_none=True)
        criterion(net(inputs[index]), y[index]).backward()
        optimizer.step()
    print(f"epoch {epoch}/{epochs}", flush=True)
"""

# dltrain's own CLI, with the one check self-written CIFAR files cannot pass turned off: the
# md5 of the official archives (tests/test_datasets.py does the same).
LAUNCH = """
import sys
import torchvision.datasets.cifar
torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True
from dltrain.cli import main
sys.argv[0] = "dltrain"
main()
"""

EPOCH_LINE = re.compile(r"^epoch \d+/\d+")

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


def timed(command: list[str], cwd: Path) -> tuple[float, float, list[float]]:
    """(wall seconds, peak RSS in MiB, the seconds at which each `epoch k/E` line came) of
    one process; its output is read as it comes (PYTHONUNBUFFERED)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    lines, epochs = [], []
    for line in proc.stdout:
        lines.append(line)
        if EPOCH_LINE.match(line):
            epochs.append(time.perf_counter() - started)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{''.join(lines[-20:])}")
    return wall, usage.ru_maxrss / 1024, epochs


def measure(kind: str, rounds: int, long: int, tmp: Path) -> None:
    w = WORKLOADS[kind]
    data = tmp / kind
    write_data(data, kind, w["images"])
    (tmp / "hand.py").write_text(HAND)
    (tmp / "launch.py").write_text(LAUNCH)
    sets = [a for item in w["sets"] + [f"data.root={data}", "data.download=false"]
            for a in ("--set", item)]  # fmt: skip
    # MNIST's IDX files are read as a user's are: `python -m dltrain`.
    entry = ["-m", "dltrain"] if kind == "mlp" else [str(tmp / "launch.py")]

    def dltrain(epochs: int, r: int) -> list[str]:
        out = ["--out", str(tmp / f"{kind}-{r}-{epochs}"), "--force"]
        return [sys.executable, *entry, "train", w["config"], *sets,
                "--set", f"train.epochs={epochs}", "--device", "cpu", *out]  # fmt: skip

    def by_hand(epochs: int, r: int) -> list[str]:
        return [sys.executable, str(tmp / "hand.py"), kind, str(data), str(epochs), str(w["batch"])]

    names = ("dltrain", "hand")
    ratios: dict = {"wall": [], "lines": []}
    rates = {(how, name): [] for how in ratios for name in names}
    memory: dict = {name: [] for name in names}
    for r in range(rounds):
        ways = [("dltrain", dltrain), ("hand", by_hand)]
        ways = ways if r % 2 == 0 else ways[::-1]
        walls, lines = {}, {}
        # Interleaved (d1 h1 d3 h3, then h1 d1 h3 d3): a slow spell of a noisy machine falls
        # on both ways rather than on one.
        for n in (1, long):
            for name, way in ways:
                walls[name, n], rss, lines[name, n] = timed(way(n, r), ROOT)
                memory[name].append(rss)
        for name in names:
            at = lines[name, long]
            if len(at) != long:
                raise SystemExit(f"{name}: {len(at)} epoch lines, not {long}")
            rates["wall", name].append(
                (long - 1) * w["images"] / (walls[name, long] - walls[name, 1])
            )
            rates["lines", name].append((long - 1) * w["images"] / (at[-1] - at[0]))
        for how in ratios:
            ratios[how].append(rates[how, "dltrain"][-1] / rates[how, "hand"][-1])
        print(
            f"  {kind} round {r + 1}: process walls dltrain {rates['wall', 'dltrain'][-1]:,.0f}/s, "
            f"hand {rates['wall', 'hand'][-1]:,.0f}/s, ratio {ratios['wall'][-1]:.3f};  epoch "
            f"lines dltrain {rates['lines', 'dltrain'][-1]:,.0f}/s, hand "
            f"{rates['lines', 'hand'][-1]:,.0f}/s, ratio {ratios['lines'][-1]:.3f}",
            flush=True,
        )
    median = statistics.median
    mem = {name: median(values) for name, values in memory.items()}
    for how, label in (("wall", "wall(E) - wall(1)"), ("lines", "epoch lines' clock")):
        print(
            f"{kind}: {label}, marginal samples/s, median of {rounds} rounds: dltrain "
            f"{median(rates[how, 'dltrain']):,.0f}, hand {median(rates[how, 'hand']):,.0f}; "
            f"dltrain/hand median {median(ratios[how]):.3f} (per round: "
            f"{' '.join(f'{x:.2f}' for x in ratios[how])})"
        )
    print(
        f"{kind}: peak RSS, median: dltrain {mem['dltrain']:.0f} MiB, hand {mem['hand']:.0f} MiB "
        f"({mem['dltrain'] / mem['hand']:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs of the long run (the short one has 1)"
    )
    parser.add_argument("--workload", choices=["mlp", "cnn", "all"], default="all")
    args = parser.parse_args()
    kinds = ["mlp", "cnn"] if args.workload == "all" else [args.workload]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            measure(kind, args.rounds, args.epochs, Path(tmp))


if __name__ == "__main__":
    main()
