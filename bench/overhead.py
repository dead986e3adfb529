"""Framework overhead: dltrain against the course's recipe and a hand-tuned PyTorch loop.

Trains the same model on the same training images, with the same optimizer, batch size and
epochs, three ways, alternated in rounds so machine drift hits all alike:
  (a) course:  torchvision MNIST/CIFAR10 reading its files, ToTensor + Normalize,
               DataLoader(batch_size, shuffle=True), zero_grad / forward / loss / backward / step
  (b) hand:    the images preloaded as one normalized float tensor; batches cut by slicing a
               shuffled index tensor (no per-sample Dataset, no collate)
  (c) dltrain: `dltrain.training.engine.fit` with the equivalent config; it carves its validation
               split out of the files, validates and writes checkpoints every epoch
Workloads: the course's MNIST MLP (784-200-10, Adam 3e-4, batch 32) and the course's CIFAR
CNN (cnn 32-64-128, dropout 0.2, Adam 3e-4, batch 128), both built by
`dltrain.models.build_model` so only the loop and the data path differ. No augmentation in
any way (the course's CIFAR crop/flip is left out of all three alike).

Data: the script writes the files. dltrain's folder holds train + val images and
`data.val_split` = val, so dltrain trains on exactly the training images that (a) and (b)
read from their own folder (written from dltrain's own train split).

Peak memory: each way runs one round alone in a fresh subprocess (`--one WAY`), which
reports its peak RSS during the run and the increase over its RSS after the imports.

Rounds: (b) and (c) run side by side in every round, in turns (b c, then c b: a drift within
a round favours neither), and each c/b ratio compares the two runs of one round. This machine
switches between two speeds (the same loop runs at ~20,000 or ~38,000 samples/s), so a round
where it switched between b and c is an outlier; the median over 9 MLP rounds outvotes them.
(a) takes the longest and is far from its target, so it runs in the first --course-rounds
rounds only (default 3).

Run: .venv/bin/python bench/overhead.py [--rounds 9] [--course-rounds 3] [--cnn-images 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision import datasets, transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dltrain.config import validate  # noqa: E402
from dltrain.data import DataInfo, build_splits  # noqa: E402
from dltrain.models import build_model  # noqa: E402
from dltrain.training.engine import fit  # noqa: E402
from tests.formats import digits_as_mnist, dump, write_cifar, write_idx  # noqa: E402

SEED = 0
WAYS = ("a", "b", "c")
LABELS = {
    "a": "(a) course: Dataset+ToTensor+DataLoader",
    "b": "(b) hand-tuned: tensor slicing",
    "c": "(c) dltrain fit, per-epoch eval+ckpt incl.",
}


def trust_cifar_files() -> None:
    # torchvision checks CIFAR files against the md5 of the official archives; files this
    # script writes cannot match, so that check alone is skipped. The reading code still runs.
    torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True


@dataclass
class Workload:
    name: str
    title: str
    tv_class: str  # torchvision's dataset class, for (a) and (b)
    config: dict  # dltrain's config, less data.root / val_split / epochs
    mean: tuple
    std: tuple
    n_train: int
    n_val: int
    rounds: int
    course_rounds: int
    epochs: int

    @property
    def batch(self) -> int:
        return self.config["data"]["batch_size"]

    @property
    def lr(self) -> float:
        return self.config["optim"]["lr"]

    def dltrain_config(self, root: Path):
        cfg = json.loads(json.dumps(self.config))
        cfg["data"].update(root=str(root), val_split=self.n_val, download=False)
        cfg.setdefault("train", {})["epochs"] = self.epochs
        return validate(cfg)

    def info(self) -> DataInfo:
        channels, size = (1, 28) if self.tv_class == "MNIST" else (3, 32)
        names = [str(i) for i in range(10)]
        return DataInfo(self.name, names, channels, (size, size), list(self.mean), list(self.std))


def workloads(args) -> dict[str, Workload]:
    mlp = Workload(
        "mlp",
        "course MNIST MLP 784-200-10, Adam 3e-4, batch 32",
        "MNIST",
        {
            "name": "bench_mlp",
            "seed": SEED,
            "device": "cpu",
            "data": {"dataset": "mnist", "batch_size": 32},
            "model": {"name": "mlp", "hidden": [200]},
            "optim": {"name": "adam", "lr": 3e-4},
        },
        (0.1307,),
        (0.3081,),
        args.mlp_images,
        args.mlp_val,
        args.rounds,
        args.course_rounds,
        args.epochs,
    )
    cnn = Workload(
        "cnn",
        "course CIFAR CNN 32-64-128 (dropout 0.2), Adam 3e-4, batch 128",
        "CIFAR10",
        {
            "name": "bench_cnn",
            "seed": SEED,
            "device": "cpu",
            "data": {"dataset": "cifar10", "batch_size": 128},
            "model": {"name": "cnn", "channels": [32, 64, 128], "dropout": 0.2},
            "optim": {"name": "adam", "lr": 3e-4},
        },
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        args.cnn_images,
        args.cnn_val if args.cnn_val is not None else max(1, args.cnn_images // 10),
        args.cnn_rounds,
        args.course_rounds,
        args.epochs,
    )
    return {"mlp": mlp, "cnn": cnn}


# --- data --------------------------------------------------------------------------------


def prepare(w: Workload, folder: Path) -> None:
    """Write dltrain's files (train + val) and the course's (dltrain's train split only)."""
    if w.tv_class == "MNIST":
        n = w.n_train + w.n_val
        (images, labels), test = digits_as_mnist(1500, 297)
        reps = -(-n // len(images))
        write_idx(
            folder / "dltrain",
            "MNIST",
            (np.tile(images, (reps, 1, 1))[:n], np.tile(labels, reps)[:n]),
            test,
        )
    else:
        write_cifar(folder / "dltrain", 10, w.n_train + w.n_val, n_test=200)
    train = build_splits(w.dltrain_config(folder / "dltrain").data, SEED).train
    images, labels = train.images.numpy(), train.labels.numpy()
    if w.tv_class == "MNIST":
        write_idx(folder / "course", "MNIST", (images[:, 0], labels.astype(np.uint8)), test)
        return
    source, target = folder / "dltrain/cifar-10-batches-py", folder / "course/cifar-10-batches-py"
    target.mkdir(parents=True)
    per = -(-len(labels) // 5)
    for i in range(5):  # CIFAR's layout: five pickled training batches, rows in CHW order
        part = slice(i * per, (i + 1) * per)
        data = images[part].reshape(-1, 3 * 32 * 32)
        dump(target / f"data_batch_{i + 1}", {"data": data, "labels": labels[part].tolist()})
    for name in ("test_batch", "batches.meta"):
        shutil.copy(source / name, target / name)


# --- the three ways ----------------------------------------------------------------------


def fresh_model(w: Workload):
    torch.manual_seed(SEED)
    model = build_model(w.info(), validate(w.config).model)
    return model, torch.optim.Adam(model.parameters(), lr=w.lr), nn.CrossEntropyLoss()


def course_way(w: Workload, folder: Path):
    """(a) The course's recipe, written as the course writes it."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(w.mean, w.std)])
    train_set = getattr(datasets, w.tv_class)(
        str(folder / "course"), train=True, transform=transform
    )
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=w.batch, shuffle=True)

    def run() -> dict:
        model, optimizer, criterion = fresh_model(w)
        start = time.perf_counter()
        for _epoch in range(w.epochs):
            model.train()
            for images, labels in train_loader:
                optimizer.zero_grad()
                outputs = model(images)
                loss = criterion(outputs, labels)
                loss.backward()
                optimizer.step()
        return {"samples": len(train_set) * w.epochs, "seconds": time.perf_counter() - start}

    return run


def hand_way(w: Workload, folder: Path):
    """(b) Hand-tuned: one preloaded normalized tensor, batches sliced by a shuffled index."""
    raw = getattr(datasets, w.tv_class)(str(folder / "course"), train=True)
    images = torch.as_tensor(raw.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
    mean, std = torch.tensor(w.mean).view(1, -1, 1, 1), torch.tensor(w.std).view(1, -1, 1, 1)
    inputs = images.float().div_(255).sub_(mean).div_(std)  # in place: one float copy at most
    targets = torch.as_tensor(raw.targets, dtype=torch.long)
    del raw, images

    def run() -> dict:
        model, optimizer, criterion = fresh_model(w)
        n = len(targets)
        start = time.perf_counter()
        for _epoch in range(w.epochs):
            model.train()
            order = torch.randperm(n)
            for first in range(0, n, w.batch):
                index = order[first : first + w.batch]
                optimizer.zero_grad(set_to_none=True)
                criterion(model(inputs[index]), targets[index]).backward()
                optimizer.step()
        return {"samples": n * w.epochs, "seconds": time.perf_counter() - start}

    return run


def dltrain_way(w: Workload, folder: Path):
    """(c) dltrain's public API. Counted: first epoch_start to the last `epoch` event, i.e.
    training and all dltrain does per epoch (validation, eval-mode pass over a training
    subset, metrics, checkpoint writes). Setup (reading the files, splitting, building) and
    the end of `fit` (final validation, summary, curves.png) are timed apart, as the
    course's and the hand loop's setup are not counted either."""
    cfg = w.dltrain_config(folder / "dltrain")

    def run() -> dict:
        marks = {"train": 0.0, "epochs": 0.0}

        def progress(event) -> None:
            now, kind = time.perf_counter(), type(event).__name__
            if kind == "BatchEnd":
                marks["last_batch"] = now
            elif kind == "EpochStart":
                marks["epoch_start"] = now
            elif kind == "EpochEnd":
                marks["train"] += marks["last_batch"] - marks["epoch_start"]
                marks["epochs"] += now - marks["epoch_start"]
                marks["last_epoch"] = now
            elif kind in ("RunStart", "RunEnd"):
                marks[{"RunStart": "start", "RunEnd": "end"}[kind]] = now

        with tempfile.TemporaryDirectory() as run_dir:
            called = time.perf_counter()
            summary = fit(cfg, Path(run_dir), [progress]).to_dict()
        n = summary["sizes"]["train"] * w.epochs
        return {
            "samples": n,
            "seconds": marks["epochs"],
            "train_seconds": marks["train"],
            "setup_seconds": marks["start"] - called,
            "end_seconds": marks["end"] - marks["last_epoch"],
            "val_acc": summary["final_val"]["acc"],
        }

    return run


BUILDERS = {"a": course_way, "b": hand_way, "c": dltrain_way}


# --- measuring ---------------------------------------------------------------------------


def time_rounds(w: Workload, folder: Path) -> dict[str, list[dict]]:
    """Round r: (a) in the first course_rounds rounds, then b c (r even) or c b (r odd);
    one fresh model per way and round."""
    runs = {way: BUILDERS[way](w, folder) for way in WAYS}
    results = {way: [] for way in WAYS}
    for r in range(w.rounds):
        order = ("b", "c") if r % 2 == 0 else ("c", "b")
        for way in (("a",) if r < w.course_rounds else ()) + order:
            results[way].append(runs[way]())
    return results


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def one(way: str, w: Workload, folder: Path) -> None:
    """Subprocess side of the memory measurement: one round of one way, then its peak RSS.

    Importing torch touches more memory than these runs need, so the lifetime peak
    (ru_maxrss) says nothing about the run: the kernel's high-water mark is reset to the
    current RSS after the imports (/proc/self/clear_refs, Linux) and read after the run."""
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    BUILDERS[way](w, folder)()
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mb": peak / 1024, "increase_mb": (peak - before) / 1024}))


def peak_memory(w: Workload, folder: Path, threads: int) -> dict[str, dict]:
    (folder / "workload.json").write_text(json.dumps(asdict(w)))
    memory = {}
    for way in WAYS:
        command = [sys.executable, __file__, "--one", way, "--data", str(folder)]
        done = subprocess.run([*command, "--threads", str(threads)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"memory run {way} failed:\n{done.stderr}")
        memory[way] = json.loads(done.stdout.strip().splitlines()[-1])
    return memory


def interference() -> tuple[float, float]:
    """(CPU seconds of other processes, seconds the hypervisor stole) so far, on Linux: the
    machine's busy time from /proc/stat less this process's and its children's."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = sum(usage.ru_utime + usage.ru_stime for usage in own)
    return (user + nice + system + irq + softirq) / tick - mine, steal / tick


# --- reporting ---------------------------------------------------------------------------


def rate(result: dict) -> float:
    return result["samples"] / result["seconds"]


def report(w: Workload, results: dict, memory: dict | None) -> dict:
    """Print one workload's table; return its ratios (medians of per-round ratios)."""
    rates = {way: [rate(r) for r in results[way]] for way in WAYS}
    c = results["c"]
    print(f"\n{w.name.upper()}: {w.title}")
    print(
        f"  {w.n_train:,} training images per epoch in every way; (c) also evaluates "
        f"{w.n_val:,} held-out images (and, by default, a training subset) per epoch; "
        f"{w.epochs} epoch(s) per round, {w.rounds} rounds of b and c in turns (b c, c b, ...), "
        f"(a) in the first {min(w.course_rounds, w.rounds)}"
    )
    print(f"  {'way':42} {'samples/s':>10} {'min-max':>17} {'peak RSS':>9} {'+RSS':>8}")
    for way in WAYS:
        low, high = min(rates[way]), max(rates[way])
        mem = memory[way] if memory else None
        peak = f"{mem['peak_mb']:7.0f}MB" if mem else "      n/a"
        plus = f"{mem['increase_mb']:6.0f}MB" if mem else "     n/a"
        print(
            f"  {LABELS[way]:42} {statistics.median(rates[way]):10,.0f} "
            f"{low:8,.0f}-{high:<8,.0f} {peak} {plus}"
        )
    train_only = [r["samples"] / r["train_seconds"] for r in c]
    print(
        f"  {'    (c) training batches only':42} {statistics.median(train_only):10,.0f}"
        f" {min(train_only):8,.0f}-{max(train_only):<8,.0f}"
    )
    after = statistics.median(r["seconds"] - r["train_seconds"] for r in c)
    setup = statistics.median(r["setup_seconds"] for r in c)
    end = statistics.median(r["end_seconds"] for r in c)
    print(
        f"  (c) per round, median: after the training batches {after:.2f} s (evaluation, "
        f"metrics, checkpoints; counted); setup {setup:.2f} s and end of fit {end:.2f} s "
        f"(final validation, summary, plot; not counted); val acc {c[-1]['val_acc']:.3f}"
    )
    per_round = [rc / rb for rc, rb in zip(rates["c"], rates["b"], strict=True)]
    print("  c/b per round: " + " ".join(f"{v:.2f}" for v in per_round))
    # (a) ran in the first rounds only: its ratios pair it with those rounds' b and c.
    ratios = {
        "c/b": statistics.median(per_round),
        "c/a": statistics.median(rc / ra for rc, ra in zip(rates["c"], rates["a"], strict=False)),
        "b/a": statistics.median(rb / ra for rb, ra in zip(rates["b"], rates["a"], strict=False)),
    }
    if memory:
        ratios["mem c/b"] = memory["c"]["increase_mb"] / memory["b"]["increase_mb"]
        ratios["peak c/b"] = memory["c"]["peak_mb"] / memory["b"]["peak_mb"]
    print(
        "  ratios (median of per-round ratios): "
        + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items() if not k.startswith(("mem", "peak")))
    )
    return ratios


TARGETS = [  # (workload, ratio, goal, at least?)
    ("mlp", "c/b", 0.95, True),
    ("mlp", "c/a", 3.0, True),
    ("cnn", "c/b", 0.95, True),
    ("mlp", "mem c/b", 1.1, False),
    ("cnn", "mem c/b", 1.1, False),
]


def print_targets(ratios: dict[str, dict]) -> None:
    print("\nTargets (samples/s: training images only; (c)'s time includes its validation)")
    print(f"  {'target':44} {'value':>6}  {'goal':>6}  result")
    for name, key, goal, at_least in TARGETS:
        if name not in ratios or key not in ratios[name]:
            continue
        value = ratios[name][key]
        met = value >= goal if at_least else value <= goal
        what = {
            "c/b": "dltrain / hand-tuned samples/s",
            "c/a": "dltrain / course samples/s",
            "mem c/b": "dltrain / hand-tuned peak RSS increase",
        }[key]
        print(
            f"  {name.upper() + ' ' + what:44} {value:6.2f}  {'≥' if at_least else '≤'}"
            f"{goal:5.2f}  {'PASS' if met else 'MISS'}"
        )
    for name, r in ratios.items():
        if "peak c/b" in r:
            print(
                f"  ({name.upper()} whole-process peak RSS c/b, imports included: "
                f"{r['peak c/b']:.2f})"
            )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["mlp", "cnn", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=9, help="MLP rounds (default 9)")
    parser.add_argument("--cnn-rounds", type=int, default=3, help="CNN rounds (default 3)")
    parser.add_argument(
        "--course-rounds", type=int, default=3, help="rounds that also run (a) (default 3)"
    )
    parser.add_argument("--epochs", type=int, default=1, help="epochs per way and round")
    parser.add_argument("--mlp-images", type=int, default=60_000, help="MLP training images")
    parser.add_argument("--mlp-val", type=int, default=6_000, help="MLP validation images (c)")
    parser.add_argument(
        "--cnn-images",
        type=int,
        default=10_000,
        help="CNN training images (default 10,000: a subset of CIFAR-10's 45,000, for 2 CPU cores)",
    )
    parser.add_argument("--cnn-val", type=int, default=None, help="CNN val images; default 10%%")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS subprocesses")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    # fit() picks its own thread count unless OMP_NUM_THREADS is set: keep every way on ours.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    trust_cifar_files()
    loads = workloads(args)
    if args.one:
        workload = Workload(**json.loads((args.data / "workload.json").read_text()))
        one(args.one, workload, args.data)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; models from "
        "dltrain.models.build_model in all ways; no augmentation.\n"
        "samples/s = training images / seconds of: (a), (b) their training loops; (c) its "
        "epochs, first epoch_start to last epoch event\n(training + what fit does per epoch: "
        "validation, eval pass over a training subset, metrics, checkpoints). Not counted:\n"
        "setup (reading files, building) and the end of fit (final validation, summary, plot)."
    )
    ratios = {}
    before, started = interference(), time.perf_counter()
    for name in ("mlp", "cnn") if args.workload == "all" else (args.workload,):
        w = loads[name]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            prepare(w, folder)
            results = time_rounds(w, folder)
            memory = None if args.no_memory else peak_memory(w, folder, args.threads)
        ratios[name] = report(w, results, memory)
    print_targets(ratios)
    # Other processes and the hypervisor on these few cores skew every figure: say how much.
    others, stolen = (after - first for after, first in zip(interference(), before, strict=True))
    print(
        f"during the {time.perf_counter() - started:.0f} s run, other processes used "
        f"{others:.1f} CPU s and the hypervisor stole {stolen:.1f} s (both near 0 when the "
        "figures can be trusted)"
    )


if __name__ == "__main__":
    main()
