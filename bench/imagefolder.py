"""An image folder read from its files every epoch, decoded once into memory, and the same
shapes held in memory from the start (`dataset: fake`), side by side.

Writes N photo-sized JPEGs (about 500x375, quality 90, 10 classes of smooth random pictures;
N = 2,000 by default) and trains the course CNN at 64 px, batch 64, flip + random resized crop,
through the real CLI, three ways, interleaved over the rounds:
  off   data.cache: off  (DataLoader workers decode every file every epoch)
  ram   data.cache: ram  (decoded once, then batches cut from memory)
  fake  dataset: fake of the same count, channels and size (nothing to decode)
It prints seconds per epoch (the first, and the median of the later ones, from metrics.csv),
training images per second, the whole process's wall time and peak RSS (wait4), and the
ratios to `fake`. Then it times the decode alone: files per second in one thread, with and
without PIL's JPEG draft mode, and with the cache's threads.

`--baseline DIR` adds a fourth way: the folder through the dltrain checked out in DIR (e.g.
`git worktree add /tmp/before <commit>`), as it trained before data.cache existed.

Run: .venv/bin/python bench/imagefolder.py [--images 2000] [--epochs 3] [--rounds 2]
     [--baseline DIR]
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

SIZE, BATCH, CLASSES = 64, 64, 10


def write_jpegs(folder: Path, count: int) -> None:
    """`count` JPEGs of about 500x375 (some portrait), smooth colour fields plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        label = i % CLASSES
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        w, h = (500, 375) if i % 4 else (375, 500)
        coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        coarse[..., label % 3] = 40 + 20 * label
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 12, (h, w, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"c{label}" / f"{i}.jpg", quality=90)


def config(
    kind: str, folder: Path, count: int, epochs: int, out: Path, baseline: Path | None = None
) -> list[str]:
    common = [
        f"data.batch_size={BATCH}",
        "data.augment.hflip=true",
        "data.augment.random_resized_crop=0.35",
        "data.val_split=0.1",
        "model.name=cnn",
        f"train.epochs={epochs}",
        "train.early_stopping.patience=null",
        "checkpoint.interval=600",
    ]
    if kind == "fake":
        # The folder's split sizes: test 10%, then val 10% of the rest.
        data = [
            "data.dataset=fake",
            f"data.fake.train_size={count - count // 10}",
            f"data.fake.test_size={count // 10}",
            f"data.fake.classes={CLASSES}",
            "data.fake.channels=3",
            f"data.fake.image_size={SIZE}",
        ]
    else:
        data = ["data.dataset=imagefolder", f"data.root={folder}", f"data.resize={SIZE}"]
        data += [] if kind == "before" else [f"data.cache={kind}"]
    sets = [arg for item in common + data for arg in ("--set", item)]
    exe = [str(ROOT / ".venv" / "bin" / "dltrain")]
    if kind == "before":  # the other checkout's package, this environment's libraries
        exe = [str(ROOT / ".venv" / "bin" / "python"), "-m", "dltrain"]
    return exe + ["train", str(ROOT / "configs" / "digits_mlp.yaml"), "--out", str(out)] + sets


def run(command: list[str], cwd: Path | None = None) -> tuple[float, float]:
    started = time.perf_counter()
    pipe = subprocess.PIPE
    proc = subprocess.Popen(command, stdout=pipe, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{output[-3000:]}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def epoch_seconds(run_dir: Path) -> list[float]:
    from dltrain.reporting.runs import read_metrics

    return [row["seconds"] for row in read_metrics(run_dir)]


def decode_rates(folder: Path, count: int = 300) -> dict[str, float]:
    """Files per second: one thread with and without draft mode, and the cache's threads."""
    from PIL import Image

    from dltrain.data import folder as folder_module
    from dltrain.data import images

    paths = sorted(str(p) for p in folder.rglob("*.jpg"))[:count]
    look = images.Look(images.margin_size(SIZE), "crop", 3)
    rates = {}
    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            images.fit(image, look)
    rates["one thread, full decode"] = len(paths) / (time.perf_counter() - started)
    started = time.perf_counter()
    for path in paths:
        images.read(path, look)
    rates["one thread, draft mode"] = len(paths) / (time.perf_counter() - started)
    split = folder_module.FileSplit([(path, 0) for path in paths], look)
    started = time.perf_counter()
    folder_module.decode(split)
    rates[f"cache decode, {len(os.sched_getaffinity(0))} threads"] = len(paths) / (
        time.perf_counter() - started
    )
    return rates


def ratios(rows: dict, kind: str, base: str) -> str:
    """One line of a kind's (first epoch, later epochs, wall, peak RSS) over another's."""
    names = ("first epoch", "later epochs", "wall", "peak RSS")
    pairs = zip(names, rows[kind], rows[base], strict=True)
    parts = [f"{name} {a / b:.2f}x" for name, a, b in pairs]
    return f"{kind} / {base}: " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="a checkout of dltrain before the cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dltrain-imagefolder-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "photos"
        started = time.perf_counter()
        write_jpegs(folder, args.images)
        print(f"wrote {args.images:,} JPEGs in {time.perf_counter() - started:.1f} s")
        kinds = ["off", "ram", "fake"] + (["before"] if args.baseline else [])
        results: dict[str, list] = {kind: [] for kind in kinds}
        for round_ in range(args.rounds):
            order = kinds if round_ % 2 == 0 else kinds[::-1]
            for kind in order:
                out = tmp / f"run-{kind}-{round_}"
                command = config(kind, folder, args.images, args.epochs, out, args.baseline)
                # python -m puts the working folder first on sys.path: the baseline's own.
                wall, rss = run(command, args.baseline if kind == "before" else None)
                seconds = epoch_seconds(out)
                results[kind].append((seconds, wall, rss))
                later = statistics.median(seconds[1:]) if len(seconds) > 1 else float("nan")
                print(
                    f"round {round_} {kind:>4}: epochs {', '.join(f'{s:.2f}' for s in seconds)} "
                    f"s, wall {wall:.1f} s, peak RSS {rss:,.0f} MiB",
                    flush=True,
                )
        train = args.images - args.images // 10
        train -= train // 10  # what the folder's splits leave for training
        print(f"\n{train:,} training images, {SIZE} px, batch {BATCH}, {args.rounds} rounds")
        print("| data | first epoch s | later epochs s | images/s | wall s | peak RSS MiB |")
        print("|---|---|---|---|---|---|")
        rows = {}
        for kind, runs in results.items():
            first = statistics.median(r[0][0] for r in runs)
            later = statistics.median(s for r in runs for s in r[0][1:])
            wall = statistics.median(r[1] for r in runs)
            rss = statistics.median(r[2] for r in runs)
            rows[kind] = (first, later, wall, rss)
            print(
                f"| {kind} | {first:.2f} | {later:.2f} | {train / later:,.0f} | {wall:.1f} | "
                f"{rss:,.0f} |"
            )
        for base in ["fake"] + (["before"] if args.baseline else []):
            for kind in ("off", "ram"):
                print(ratios(rows, kind, base))
        print(f"ram / off, later epochs: {rows['ram'][1] / rows['off'][1]:.2f}x")
        print("\ndecode alone (files/s):")
        for what, rate in decode_rates(folder).items():
            print(f"  {what}: {rate:,.0f}")


if __name__ == "__main__":
    main()
