"""1 process against N data-parallel processes (`dltrain train --nproc N`), side by side.

Each workload trains twice through the real CLI: once in one process at batch size B, once
in N processes at B/N each (the same effective batch, so the runs follow the same path).
Prints seconds per epoch, training samples per second, whole-command wall time and best
validation accuracy, and the N/1 ratios. On a CPU-only machine the processes share the same
cores (gloo on loopback): this measures dltrain's distributed overhead, not a speed-up; on a
machine with N GPUs each process gets its own device (NCCL).

Run: .venv/bin/python bench/distributed.py [--nproc 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKLOADS = {
    "digits MLP [256,128]": """\
name: bench_ddp_mlp
seed: 0
data: {dataset: digits, batch_size: BATCH}
model: {name: mlp, hidden: [256, 128]}
optim: {name: adam, lr: 1e-3}
train: {epochs: EPOCHS}
""",
    "CNN on 3x32x32 fake data": """\
name: bench_ddp_cnn
seed: 0
data: {dataset: fake, batch_size: BATCH, fake: {train_size: 4096, image_size: 32}}
model: {name: cnn}
optim: {name: adam, lr: 1e-3}
train: {epochs: EPOCHS}
""",
}


def train(config: Path, run_dir: Path, nproc: int) -> dict:
    command = [sys.executable, "-m", "dltrain", "train", str(config), "--run-dir", str(run_dir)]
    command += ["--json", "--force"] + (["--nproc", str(nproc)] if nproc > 1 else [])
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    summary = json.loads(result.stdout)
    summary["wall"] = time.perf_counter() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="effective batch size")
    args = parser.parse_args()
    header = f"{'workload':26} {'procs':>5} {'s/epoch':>8} {'samples/s':>10} {'wall s':>7} "
    print(header + f"{'best val acc':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in WORKLOADS.items():
            results = {}
            for nproc in (1, args.nproc):
                config = Path(tmp) / f"{nproc}.yaml"
                batch = args.batch // nproc
                config.write_text(
                    text.replace("BATCH", str(batch)).replace("EPOCHS", str(args.epochs))
                )
                summary = train(config, Path(tmp) / f"run{nproc}", nproc)
                per_epoch = summary["seconds_per_epoch"]
                rate = summary["sizes"]["train"] / per_epoch
                results[nproc] = (per_epoch, summary["wall"])
                print(
                    f"{name:26} {nproc:>5} {per_epoch:>8.3f} {rate:>10,.0f} "
                    f"{summary['wall']:>7.1f} {summary['best_metrics']['val_acc']:>12.4f}"
                )
            (one_epoch, one_wall), (many_epoch, many_wall) = results[1], results[args.nproc]
            print(
                f"{'':26} {args.nproc}/1: epoch time {many_epoch / one_epoch:.2f}x, "
                f"wall time {many_wall / one_wall:.2f}x"
            )


if __name__ == "__main__":
    main()
