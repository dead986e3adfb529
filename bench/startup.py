"""Start-up time: `dltrain --help` and `dltrain config show` against `import torch`.

Both commands must not import torch (cli.py imports it inside the commands that train or
evaluate). Each command runs as a fresh subprocess several times, after one untimed run
that warms the file cache; the script prints the median and min-max wall time, and checks
with `python -X importtime` that the dltrain commands never import torch.

Run: .venv/bin/python bench/startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/digits_mlp.yaml"


def dltrain_command() -> list[str]:
    """The installed entry point next to this interpreter, else `python -m dltrain`."""
    for candidate in (ROOT / ".venv/bin/dltrain", Path(sys.executable).parent / "dltrain"):
        if candidate.is_file():
            return [str(candidate)]
    return [sys.executable, "-m", "dltrain"]


def wall_times(command: list[str], repeats: int) -> list[float]:
    subprocess.run(command, cwd=ROOT, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def imports_torch(args: list[str]) -> bool:
    """Whether `python -m dltrain ARGS` imports torch (from -X importtime's report)."""
    command = [sys.executable, "-X", "importtime", "-m", "dltrain", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in done.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per command")
    args = parser.parse_args()
    dltrain = dltrain_command()
    rows = [
        ("dltrain --help", [*dltrain, "--help"], ["--help"]),
        (
            f"dltrain config show {CONFIG}",
            [*dltrain, "config", "show", CONFIG],
            ["config", "show", CONFIG],
        ),
        ('python -c "import torch"', [sys.executable, "-c", "import torch"], None),
        ('python -c "pass"', [sys.executable, "-c", "pass"], None),
    ]
    print(f"wall time of a fresh process, median of {args.repeats} runs after one warm-up run")
    print(f"dltrain: {' '.join(dltrain)}")
    print(f"  {'command':45} {'median':>8} {'min-max':>12}  imports torch")
    for label, command, cli_args in rows:
        times = wall_times(command, args.repeats)
        torch_note = "-" if cli_args is None else ("YES" if imports_torch(cli_args) else "no")
        spread = f"{min(times):.2f}-{max(times):.2f}s"
        print(f"  {label:45} {statistics.median(times):7.2f}s {spread:>12}  {torch_note}")


if __name__ == "__main__":
    main()
