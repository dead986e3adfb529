"""Crash safety the way database engines test it: a fault at each write boundary of a run's
files, then what is on disk and what `dltrain train --resume` makes of it.

The write order (saving.flush): a best.pt of an earlier epoch is staged as .best-<epoch>.pt,
then last.pt (the one commit point), then the staged file becomes best.pt (or best.pt a link to
last.pt when last.pt is the best), then at the end summary.json. A SIGKILL comes from inside
the child at the exact boundary (a hook wraps the function), a full disk (ENOSPC) or a failing
disk (EIO) from a patched write; each case ends, after --resume, equal to a run never
interrupted (train.deterministic)."""

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from dltrain.config import validate
from dltrain.errors import DltrainError
from dltrain.reporting.listing import describe_run
from dltrain.reporting.runs import read_metrics
from dltrain.training import checkpoint
from dltrain.training.engine import fit
from tests import alike
from tests.alike import assert_same_run
from tests.test_faults import run

# checkpoint.interval so long that the epochs' checkpoints wait in memory and one flush at the
# end writes them: best.pt (epoch 2, staged) and last.pt (epoch 4) differ with seed 1; with
# seed 0 the last epoch is the best (best.pt a link).
CONFIG = """\
name: crash
seed: SEED
device: cpu
data: {dataset: digits, val_split: 0.2, batch_size: 32}
model: {name: mlp, hidden: [64]}
optim: {name: adam, lr: 2e-2}
train: {epochs: 4, deterministic: true}
checkpoint: {interval: 1000000}
"""
BEST_EPOCH = {1: 2, 0: 4}  # seed -> the best epoch of the uninterrupted run


def write_config(folder: Path, seed: int) -> Path:
    return alike.write_config(folder, CONFIG.replace("SEED", str(seed)), f"seed{seed}.yaml")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, Path]:
    """The runs never interrupted, one per seed."""
    folder = tmp_path_factory.mktemp("reference")
    runs = {}
    for seed, best in BEST_EPOCH.items():
        runs[seed] = folder / f"run{seed}"
        result = run(["train", write_config(folder, seed), "--run-dir", runs[seed]])
        assert result.returncode == 0, result.stderr
        summary = json.loads((runs[seed] / "summary.json").read_text())
        assert summary["best_epoch"] == best, "the premise of these cases changed: pick a seed"
    return runs


def kill_at(function: str, name: str, when: str) -> str:
    """Hook source: SIGKILL the child `when` ("before"/"after") `dltrain.files.<function>` (or
    os.replace) is called with a last argument whose file name is `name` (a prefix)."""
    module = "os" if function == "replace" else "dltrain.files"
    return f"""
import importlib, os, signal
from pathlib import Path
holder = importlib.import_module({module!r})
real = getattr(holder, {function!r})
def hooked(*args, **kwargs):
    hit = Path(str(args[-1])).name.startswith({name!r})
    if hit and {when!r} == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if hit and {when!r} == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(holder, {function!r}, hooked)
"""


def files(folder: Path) -> dict:
    """What a crash left: checkpoint name -> epoch held, staged files, rows, summary."""
    held = {}
    for name in ("last.pt", "best.pt"):
        if (folder / name).exists():
            held[name] = checkpoint.load(folder / name)["epoch"]
    return {
        "held": held,
        "staged": sorted(p.name for p in folder.glob(".best-*.pt")),
        "rows": len(read_metrics(folder)),
        "summary": (folder / "summary.json").exists(),
    }


# (seed, function, file name, before/after) -> what the crash leaves, and --resume's note
BOUNDARIES = {
    "staging best.pt": (1, "save", ".best-2", "before", {}, [], None),
    "best.pt staged, last.pt not": (1, "save", "last.pt", "before", {}, [".best-2.pt"], None),
    "last.pt written, best.pt not in place": (
        1, "replace", "best.pt", "before", {"last.pt": 4}, [".best-2.pt"],
        "best.pt was missing, not the best epoch 2: put back the checkpoint of epoch 2",
    ),
    "last.pt written, best.pt not linked to it": (
        0, "link", "best.pt", "before", {"last.pt": 4}, [],
        "best.pt was missing, not the best epoch 4: linked it to last.pt",
    ),
    "checkpoints written, summary.json not": (
        1, "replace", "summary.json", "before", {"last.pt": 4, "best.pt": 2}, [],
        "the run is done but its summary.json was not written; writing it",
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_a_kill_at_each_write_boundary_resumes_to_the_same_run(tmp_path, reference, boundary):
    seed, function, name, when, held, staged, repaired = BOUNDARIES[boundary]
    folder = tmp_path / "run"
    args = ["train", write_config(tmp_path, seed), "--run-dir", folder]
    killed = run(args, kill_at(function, name, when))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = files(folder)
    assert (left["held"], left["staged"], left["rows"]) == (held, staged, 4)
    assert not left["summary"]
    assert describe_run(folder)["status"] == "killed"
    resumed = run(["train", "--resume", folder])
    assert resumed.returncode == 0, resumed.stderr
    said = " ".join(resumed.stderr.split())
    if repaired:
        assert repaired in said
    if not held:
        assert "no checkpoint was written before the run stopped" in said
    assert not list(folder.glob(".best-*.pt")) and not list(folder.glob(".*.tmp-*"))
    assert_same_run(reference[seed], folder)


def _config(seed: int = 1, **checkpoint_options) -> object:
    return validate(
        {
            "name": "crash",
            "seed": seed,
            "device": "cpu",
            "data": {"dataset": "digits", "val_split": 0.2, "batch_size": 32},
            "model": {"name": "mlp", "hidden": [64]},
            "optim": {"name": "adam", "lr": 2e-2},
            "train": {"epochs": 4, "deterministic": True},
            "checkpoint": {"interval": 1e6, **checkpoint_options},
        }
    )


FAILING_WRITES = {  # which write fails -> the files a retry after the fault finds
    ".best-2.pt": {},
    "last.pt": {},
    "metrics.csv": {},
    "summary.json": {"last.pt": 4, "best.pt": 2},
}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("target", list(FAILING_WRITES))
def test_a_failed_write_is_one_line_keeps_what_was_saved_and_resumes(
    tmp_path, monkeypatch, cli, reference, target, code
):
    """The disk fills up (or fails) at one write: one line naming the file and the free
    space, nothing committed is lost, and after the fault --resume finishes the same run."""
    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        name = Path(str(path)).name
        hit = name == target or name.startswith(f".{target}.tmp-")
        if hit and ("w" in mode or "a" in mode):
            raise OSError(code, os.strerror(code))
        return real_open(path, mode, *args, **kwargs)

    import builtins

    monkeypatch.setattr(builtins, "open", failing_open)
    folder = tmp_path / "run"
    with pytest.raises(DltrainError) as caught:
        fit(_config(), folder)
    monkeypatch.undo()
    message = str(caught.value)
    assert "\n" not in message and f"could not write {folder}" in message
    assert os.strerror(code) in message and "bytes free there" in message
    assert f"dltrain train --resume {folder}" in message
    assert ("the disk is full" in message) == (code == errno.ENOSPC)
    assert files(folder)["held"] == FAILING_WRITES[target]
    assert not list(folder.glob(".*.tmp-*")) and not list(folder.glob(".best-*.pt"))
    resumed = cli("train", "--resume", folder, "-q")
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(reference[1], folder)


def test_a_damaged_best_pt_is_named_on_resume(cli, tmp_path, reference):
    """best.pt truncated by hand, last.pt intact: --resume says so (it cannot be repaired from
    the disk) and the run is still continued."""
    folder = tmp_path / "run"
    fit(_config(), folder)  # a finished run: extend it by an epoch
    data = (folder / "best.pt").read_bytes()
    (folder / "best.pt").write_bytes(data[: len(data) // 2])
    resumed = cli("train", "--resume", folder, "--set", "train.epochs=5", "-q")
    assert resumed.exit_code == 0, resumed.output
    said = " ".join(resumed.stderr.split())
    assert "best.pt is damaged, and the checkpoint of the best epoch 2 is not on disk" in said


def test_eio_reading_a_checkpoint_is_one_line(cli, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    fit(_config(), folder)

    def failing_load(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(torch, "load", failing_load)
    for args in (["eval", "--ckpt", folder / "best.pt"], ["train", "--resume", folder]):
        result = cli(*args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Input/output error" in lines[0], lines
