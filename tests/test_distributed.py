"""Data-parallel training on torch.distributed: 2 processes on the CPU (gloo, loopback),
started through torchrun's launcher by `dltrain train --nproc 2`, against 1 process.

Every subprocess here imports torch in three processes (launcher and two ranks): a few
seconds each on 2 cores, so the end-to-end tests are marked slow (CI still runs them).
"""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from dltrain.config import validate
from dltrain.data import Batches, DataInfo, TensorSplit, build_splits, make_loader
from dltrain.errors import DltrainError
from dltrain.training import distributed
from dltrain.training.engine import fit
from tests.formats import write_pngs

REPO = Path(__file__).resolve().parents[1]

# Digits, 1,294 training images: an even count, so 2 ranks split every batch evenly.
CONFIG = """\
name: ddp
seed: 3
device: cpu
data: {dataset: digits, batch_size: 32}
model: {name: mlp, hidden: [64], dropout: 0.0}
optim: {name: adam, lr: 3e-3}
train: {epochs: 1}
"""


def dltrain(*args, cwd=REPO, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dltrain", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dltrain", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "ddp.yaml"
    path.write_text(CONFIG)
    return path


# --- sharding: in-process, no process group ----------------------------------------------


def _split(n: int) -> tuple[TensorSplit, DataInfo]:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    info = DataInfo("t", [str(i) for i in range(10)], 1, (1, 1), [0.0], [1 / 255])
    return TensorSplit(images, torch.arange(n) % 10), info


@pytest.mark.parametrize("n", [64, 70, 71])
def test_rank_batches_together_are_the_one_process_batch(n):
    split, info = _split(n)
    one = Batches(split, info, batch_size=8, shuffle=True, seed=5)
    ranks = [Batches(split, info, 4, True, 5, shard=(r, 2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # equal step counts: no rank waits at a collective
    seen = []
    for whole, *parts in zip(one, *ranks, strict=False):
        ids = sorted(int(x) for part in parts for x in part[0].flatten())
        seen += ids
        if n % 2 == 0:
            assert ids == sorted(int(x) for x in whole[0].flatten())
    assert set(seen) == set(range(n))  # every sample, padded by at most one repeat
    assert len(seen) == n + n % 2
    # The generators stay in step on both ranks (they hold the loader state a checkpoint saves).
    assert torch.equal(ranks[0].generator.get_state(), ranks[1].generator.get_state())


def test_evaluation_shards_cover_the_split_exactly_once():
    cfg = validate({"data": {"dataset": "digits", "batch_size": 8}})
    splits = build_splits(cfg.data, 0)
    got = []
    for rank in range(3):
        loader = make_loader(splits, "val", cfg.data, torch.device("cpu"), shard=(rank, 3))
        batches = list(loader)
        assert len(loader) == len(batches)  # its length counts this rank's share once
        got += [label for _, labels in batches for label in labels.tolist()]
    assert sorted(got) == sorted(splits.val.labels.tolist())


def test_sync_batchnorm_on_cpu_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(DltrainError, match="SyncBatchNorm runs on CUDA only"):
        distributed.wrap(model, torch.device("cpu"), sync_batchnorm=True)


def test_nproc_with_a_bad_config_fails_before_launching(cli, write_config):
    path = write_config(CONFIG.replace("lr: 3e-3", "lrr: 3e-3"))
    result = cli("train", path, "--nproc", "2")
    assert result.exit_code == 2
    assert "optim.lrr: unknown config key; did you mean optim.lr?" in result.stderr


def test_one_process_run_is_unchanged_by_the_distributed_code(tmp_path, config):
    cfg = validate(yaml.safe_load(CONFIG))
    summary = fit(cfg, tmp_path / "run")
    assert summary.status == "finished"
    assert not torch.distributed.is_initialized()


# --- 2 processes against 1 ---------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_match_one_with_half_the_batch_each(tmp_path, config):
    one = fit(validate(yaml.safe_load(CONFIG)), tmp_path / "one").to_dict()
    # No --run-dir: rank 0 names the run folder and tells rank 1 (one folder, not two).
    result = dltrain("train", config, "--nproc", "2", "--set", "data.batch_size=16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folders = list((tmp_path / "runs" / "ddp").iterdir())
    assert len(folders) == 1
    two = folders[0]
    assert {"config.yaml", "metrics.csv", "summary.json", "best.pt", "last.pt"} <= {
        p.name for p in two.iterdir()
    }
    assert not list(two.glob(".*.tmp-*"))
    # Only rank 0 prints: one start line, one epoch line, one summary.
    assert result.stdout.count("× 2 processes") == 1
    assert result.stdout.count("epoch 1/1") == 1
    # Same initial weights, the same samples per step, gradients averaged: same weights.
    assert max_diff(weights(tmp_path / "one" / "last.pt"), weights(two / "last.pt")) < 1e-5
    summary = json.loads((two / "summary.json").read_text())
    assert summary["sizes"] == one["sizes"]
    # Validation over the whole split exactly once, summed over the ranks.
    assert abs(summary["best_metrics"]["val_acc"] - one["best_metrics"]["val_acc"]) < 1e-9
    assert abs(summary["best_metrics"]["val_loss"] - one["best_metrics"]["val_loss"]) < 1e-5
    assert abs(summary["best_metrics"]["train_loss"] - one["best_metrics"]["train_loss"]) < 1e-5

    # A checkpoint written by 2 processes evaluates in 1 with the same metrics.
    evaluated = dltrain("eval", "--ckpt", two / "best.pt", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["acc"] == pytest.approx(summary["best_metrics"]["val_acc"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(summary["best_metrics"]["val_loss"], abs=1e-5)


@pytest.mark.slow
def test_early_stopping_ends_both_processes(tmp_path, config):
    result = dltrain(
        "train",
        config,
        "--nproc",
        "2",
        "--run-dir",
        tmp_path / "run",
        "--set",
        "train.epochs=10",
        "--set",
        "train.early_stopping.patience=1",
        "--set",
        "train.early_stopping.min_delta=0.5",  # nothing improves by half: stop at epoch 2
        "--json",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # one JSON object: rank 1 printed nothing
    assert summary["status"] == "stopped_early"
    assert summary["epochs_run"] == 2
    assert len(rows(tmp_path / "run")) == 2


@pytest.mark.slow
def test_nan_stops_every_process_with_one_message(tmp_path, config):
    absurd = ["--set", "optim.name=sgd", "--set", "optim.momentum=0.9", "--set", "optim.lr=1e12"]
    result = dltrain("train", config, "--nproc", "2", "--run-dir", tmp_path / "run", *absurd)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "loss became NaN/Inf at epoch 1" in lines[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"


@pytest.mark.slow
def test_ctrl_c_stops_all_processes_and_resume_equals_uninterrupted(tmp_path, config):
    settings = ["--set", "train.epochs=5", "--set", "data.batch_size=8", "--nproc", "2"]
    full = dltrain("train", config, *settings, "--run-dir", tmp_path / "full", "-q")
    assert full.returncode == 0, full.stderr

    run = tmp_path / "run"
    proc = start("train", config, *settings, "--run-dir", run)
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").exists() or len(rows(run)) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # to the launcher, which passes it to both processes
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"resume with: dltrain train --resume {run} --nproc 2" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert not list(run.glob(".*.tmp-*"))

    resumed = dltrain("train", "--resume", run, "--nproc", "2", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert max_diff(weights(tmp_path / "full" / "last.pt"), weights(run / "last.pt")) < 1e-6
    got, want = rows(run), rows(tmp_path / "full")
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert abs(float(a["val_loss"]) - float(b["val_loss"])) < 1e-6


@pytest.mark.slow
def test_resume_with_another_process_count(tmp_path, config):
    """A 2-process run continued by 1 process (batch size unchanged per process)."""
    run = tmp_path / "run"
    first = dltrain("train", config, "--nproc", "2", "--run-dir", run, "-q")
    assert first.returncode == 0, first.stderr
    more = dltrain("train", "--resume", run, "--set", "train.epochs=2", "-q")
    assert more.returncode == 0, more.stderr
    assert [int(r["epoch"]) for r in rows(run)] == [1, 2]


def test_launcher_is_refused_inside_torchrun(cli, config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = cli("train", config, "--nproc", "2")
    assert result.exit_code == 1
    assert "under torchrun, leave it out" in result.stderr


def test_only_rank_zero_prints(cli, config, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    result = cli("train", config, "--set", "optim.lrr=1")
    assert result.exit_code == 2
    assert result.stdout == "" and result.stderr == ""


@pytest.mark.slow
def test_finetune_with_unfreezing_in_two_processes_matches_one(tmp_path, config):
    """DDP syncs only the parameters that trained when it wrapped the model: unfreezing at
    epoch 2 must wrap again, or the backbone's gradients would not be averaged."""
    fit(validate(yaml.safe_load(CONFIG)), tmp_path / "source")
    new_task = tmp_path / "ft.yaml"
    new_task.write_text(
        CONFIG.replace("name: ddp", "name: ft")
        + "finetune: {freeze: all_but_head, unfreeze_at_epoch: 2}\n"
    )
    source = tmp_path / "source" / "best.pt"
    settings = ["--from", source, "--set", "train.epochs=2"]
    one = dltrain("finetune", new_task, *settings, "--run-dir", tmp_path / "one", "-q")
    assert one.returncode == 0, one.stderr
    half = ["--set", "data.batch_size=16", "--nproc", "2"]
    two = dltrain("finetune", new_task, *settings, *half, "--run-dir", tmp_path / "two", "-q")
    assert two.returncode == 0, two.stderr
    assert (
        max_diff(weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt"))
        < 1e-5
    )
    # The backbone did train in epoch 2 (it was unfrozen), in both.
    assert max_diff(weights(source), weights(tmp_path / "two" / "last.pt")) > 1e-3


@pytest.mark.slow
def test_image_folder_in_two_processes(tmp_path):
    """The DataLoader path: DistributedSampler for training, r::N shards for validation."""
    write_pngs(tmp_path / "images", {"a": 30, "b": 30, "c": 31}, size=(16, 16))
    config = tmp_path / "folder.yaml"
    config.write_text(
        f"name: folder\ndevice: cpu\ndata: {{dataset: imagefolder, root: {tmp_path / 'images'}, "
        "batch_size: 4, num_workers: 1, val_split: 0.2, test_split: 0.1}\n"
        "model: {name: cnn, channels: [8, 16]}\noptim: {name: adam, lr: 1e-3}\n"
        "train: {epochs: 2}\n"
    )
    run = tmp_path / "run"
    result = dltrain("train", config, "--nproc", "2", "--run-dir", run, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sizes"] == {"train": 66, "val": 16, "test": 9}
    evaluated = dltrain("eval", "--ckpt", run / "best.pt", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["samples"] == 16
    assert metrics["acc"] == pytest.approx(summary["best_metrics"]["val_acc"], abs=1e-9)


def test_mid_epoch_checkpoint_of_another_process_count_replays_the_epoch(tmp_path):
    """Resuming a 2-process mid-epoch checkpoint in 1 process: the epoch's data is read again
    from its start, and the mid-epoch weights are not taken for the best epoch's."""
    from dltrain.training import engine, saving
    from dltrain.training import session as sessions
    from dltrain.training.epoch import Progress

    cfg = validate(yaml.safe_load(CONFIG))
    s = sessions.build(cfg, tmp_path)
    start_of_epoch = s.train_batches.generator.get_state()
    s.stopper.step(0.9, 0)  # epoch 0 "best", so best_epoch == the checkpoint's epoch
    next(iter(s.train_batches))  # the loader moved on, as it had mid-epoch
    partial = Progress(epoch=1, loader_rng=start_of_epoch, steps=3, seen=96, world_size=2)
    payload = {**saving.payload(s, engine.LoopState(partial=partial), {}), "world_size": 2}

    resumed = sessions.build(cfg, tmp_path, resuming=True)
    loop = engine.LoopState(**saving.restore(resumed, payload))
    start = engine._epoch_start(resumed, loop)
    assert start.steps == 0  # no steps to skip: the epoch is read from its start
    assert torch.equal(resumed.train_batches.generator.get_state(), start_of_epoch)
    assert loop.best_weights is None
