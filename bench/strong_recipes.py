"""The shipped strong recipes against the course's configs, as shipped, at three dataset sizes.

For each dataset family the strong config and its course config train through the real CLI
on files the script writes in the dataset's real format (MNIST/Fashion-MNIST IDX files, CIFAR-10
batches), about 1,000, 10,000 and 60,000 training images (CIFAR: 50,000, its real size), 3
seeds; then `dltrain eval --split test` measures best.pt on 1,000 test images. Only data.root,
data.download and data.val_split are set (val_split 0.1 below 50,000 images, else the
configs' own 5,000) and the seed: the configs are measured as shipped.

The images are scikit-learn's real handwritten digits (tests/formats.py:jittered_digits):
each a digit of a fixed 1,497 (the test set draws from the other 300, so no test digit is
seen in training), scaled, rotated by up to ±12°, shifted by up to ±3 px, with pixel noise.
Fashion-MNIST files: the same, half of them mirrored (so a mirror keeps the class, as for
clothes, and the recipes' flip is fair). CIFAR-10 files: 32 px, a random colour for the
background and one for the digit 0.35-0.65 off it in every channel, half mirrored.

Every run appends one JSON line to --results, and a run already there is not repeated: the
script can be stopped and started again. --table prints the table from the results alone.

Run: .venv/bin/python bench/strong_recipes.py [--families mnist,fashion] [--sizes 1000,10000]
     [--seeds 0,1,2] [--work /tmp/dltrain-strong] [--table]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.formats import jittered_digits, write_cifar_images, write_idx  # noqa: E402

FAMILIES = {  # family: (course config, strong config, how its files are written)
    "mnist": ("configs/mnist_cnn.yaml", "configs/mnist_cnn_strong.yaml"),
    "fashion": ("configs/fashion_mnist_cnn.yaml", "configs/fashion_mnist_cnn_strong.yaml"),
    "cifar": ("configs/cifar_cnn.yaml", "configs/cifar_resnet18_strong.yaml"),
}
TEST_SIZE = 1000
DLTRAIN = [sys.executable, "-m", "dltrain"]


def write_data(family: str, size: int, folder: Path) -> Path:
    """The family's files with `size` training images (and TEST_SIZE test images)."""
    if (folder / "done").exists():
        return folder
    size = min(size, 50_000) if family == "cifar" else size
    style = {"mnist": {}, "fashion": {"mirror": True}, "cifar": {"mirror": True, "colour": True}}
    style = {**style[family], "size": 32 if family == "cifar" else 28}
    train = jittered_digits(size, "train", seed=1, **style)
    test = jittered_digits(TEST_SIZE, "test", seed=2, **style)
    if family == "cifar":
        write_cifar_images(folder, train, test)
    else:
        write_idx(folder, {"mnist": "MNIST", "fashion": "FashionMNIST"}[family], train, test)
    (folder / "done").touch()
    return folder


def train_and_test(config: str, data: Path, size: int, seed: int, run: Path) -> dict:
    """One run through the CLI, then its best.pt on the test split."""
    val_split = "0.1" if size < 50_000 else "5000"
    sets = [f"data.root={data}", "data.download=false", f"data.val_split={val_split}"]
    sets.append(f"seed={seed}")
    args = [a for item in sets for a in ("--set", item)]
    started = time.perf_counter()
    # A CIFAR batch's md5 cannot match the official archive's: skip torchvision's check.
    hook = "import torchvision.datasets.cifar as c; c.check_integrity = lambda *a, **k: True\n"
    code = hook + "import sys; from dltrain.cli import main; sys.argv[0] = 'dltrain'; main()"
    command = [sys.executable, "-c", code, "train", config, *args, "--out", str(run), "--force"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{config} failed:\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = time.perf_counter() - started
    command = [sys.executable, "-c", code, "eval", "--ckpt", str(run / "best.pt")]
    done = subprocess.run(
        [*command, "--split", "test", "--json"], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode:
        raise SystemExit(f"eval of {run} failed:\n{done.stderr[-2000:]}")
    test = json.loads(done.stdout)
    return {
        "val_acc": summary["best_metrics"]["val_acc"],
        "test_acc": test["acc"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "best_weights": summary.get("best_weights"),
        "seconds": seconds,
    }


def table(results: list[dict]) -> str:
    """Per family and size: course and strong, mean val and test accuracy over the seeds, and
    the mean and worst per-seed difference (strong - course) of test accuracy. (Minutes per
    run are in the results, not here: runs shared the machine with other jobs.)"""
    lines = [
        "| family | train images | seeds | course val / test | strong val / test | "
        "strong - course, test (mean; worst seed) |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["family"], r["size"]) for r in results})
    for family, size in keys:
        here = [r for r in results if (r["family"], r["size"]) == (family, size)]
        runs = {(r["which"], r["seed"]): r for r in here}
        seeds = sorted(
            seed for which, seed in runs if which == "strong" and ("course", seed) in runs
        )
        if not seeds:
            continue
        means = {
            (which, key): statistics.mean(runs[which, seed][key] for seed in seeds)
            for which in ("course", "strong")
            for key in ("val_acc", "test_acc")
        }
        diffs = [runs["strong", s]["test_acc"] - runs["course", s]["test_acc"] for s in seeds]
        lines.append(
            f"| {family} | {size:,} | {len(seeds)} | {means['course', 'val_acc']:.3f} / "
            f"{means['course', 'test_acc']:.3f} | {means['strong', 'val_acc']:.3f} / "
            f"{means['strong', 'test_acc']:.3f} | {statistics.mean(diffs):+.3f}; "
            f"{min(diffs):+.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="mnist,fashion")
    parser.add_argument("--sizes", default="1000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dltrain-strong"))
    parser.add_argument("--results", type=Path, default=None, help="default: WORK/results.jsonl")
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    results_path = args.results or args.work / "results.jsonl"
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    if results_path.exists():
        results = [json.loads(line) for line in results_path.read_text().splitlines() if line]
    if not args.table:
        done = {(r["family"], r["size"], r["seed"], r["which"]) for r in results}
        for size in map(int, args.sizes.split(",")):
            for family in args.families.split(","):
                data = write_data(family, size, args.work / f"data-{family}-{size}")
                for seed in map(int, args.seeds.split(",")):
                    for which, config in zip(("course", "strong"), FAMILIES[family], strict=True):
                        if (family, size, seed, which) in done:
                            continue
                        run = args.work / f"run-{family}-{size}-{which}-{seed}"
                        result = train_and_test(config, data, size, seed, run)
                        record = {"family": family, "size": size, "seed": seed, "which": which,
                                  "config": config, **result}  # fmt: skip
                        print(json.dumps(record), flush=True)
                        with open(results_path, "a") as handle:
                            handle.write(json.dumps(record) + "\n")
                        results.append(record)
    print(table(results))


if __name__ == "__main__":
    main()
