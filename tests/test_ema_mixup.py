"""EMA of the weights (train.ema) and Mixup/CutMix (data.mixup): the update and the mixing by
hand formula, what is validated and saved, and exact resume with both on."""

import json
import math

import pytest
import torch
from torch import nn

from dltrain.config import EmaConfig, MixupConfig, TrainConfig, load_config
from dltrain.data import Mixup
from dltrain.optim import EMA
from dltrain.reporting.events import BatchEnd, EpochEnd
from dltrain.reporting.runs import read_metrics
from dltrain.training import checkpoint
from dltrain.training.engine import fit
from dltrain.training.epoch import train_one_epoch
from tests.test_training import _cfg

ON = {"train.ema": {"decay": 0.9}, "data.mixup": {"alpha": 0.4, "cutmix_alpha": 1.0}}


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_update_matches_the_hand_formula(warmup):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    cfg = EmaConfig(decay=0.8, start_epoch=1, every=2, warmup=warmup)
    ema = EMA(model, cfg, steps_per_epoch=2)
    # By hand: TensorFlow's num_updates warm-up, min(decay, (1 + t) / (10 + t)) at update t.
    decays = [min(0.8, (1 + t) / (10 + t)) if warmup else 0.8 for t in range(3)]
    assert decays == ([0.1, 2 / 11, 0.25] if warmup else [0.8] * 3)
    average = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 9):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(6, 3))  # moves BatchNorm's running statistics
        ema.after_step()
        live = [p.detach() for p in model.parameters()]
        if step % 2 == 0:  # every 2 steps; the first 2 steps (start_epoch 1) follow the weights
            d = decays[step // 2 - 2] if step > 2 else 0.0
            average = [(d * a + (1 - d) * w).clone() for a, w in zip(average, live, strict=True)]
        for mine, expected in zip(ema.module.parameters(), average, strict=True):
            torch.testing.assert_close(mine, expected)
    for mine, live in zip(ema.module.buffers(), model.buffers(), strict=True):
        assert torch.equal(mine, live)  # buffers copied as they are
    leftover = 0.8**10 if not warmup else math.prod(min(0.8, (1 + t) / (10 + t)) for t in range(10))
    assert ema.leftover(2 + 2 * 10) == pytest.approx(leftover)


def test_a_slow_ema_on_a_short_run_ends_as_good_as_the_trained_weights(tmp_path):
    """The reproduction of issue 21 on the embedded digits: decay 0.999 on a run of 234 steps,
    batch norm. Without the warm-up the average stayed near its random start (val 0.35 while
    the weights reached 1.0) and best.pt kept it; now the better of the two is kept."""
    sets = ["train.ema.decay=0.999", "train.epochs=6", "model.batch_norm=true", "device=cpu"]
    cfg = load_config("configs/digits_cnn.yaml", sets)
    summary = fit(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    raw_best = max(row["val_acc_raw"] for row in rows)
    assert summary.final_val["acc"] >= raw_best - 0.01
    assert summary.best_metrics["val_acc"] >= raw_best
    assert rows[-1]["val_acc_ema"] >= raw_best - 0.02  # the average itself warmed up
    # Without the warm-up the average is the trap it was; the better weights are still kept.
    cfg = load_config("configs/digits_cnn.yaml", [*sets, "train.ema.warmup=false"])
    cold = fit(cfg, tmp_path / "cold")
    rows = read_metrics(tmp_path / "cold")
    assert max(row["val_acc_ema"] for row in rows) < 0.8
    assert cold.best_weights == "trained" and cold.final_weights == "trained"
    best = checkpoint.load(tmp_path / "cold" / "best.pt")
    assert best["ema"]["weights"] == "trained"
    for key, value in best["ema"]["trained"].items():
        assert torch.equal(best["model"][key], value)
    assert cold.final_val["acc"] >= max(row["val_acc_raw"] for row in rows) - 0.01


@pytest.mark.parametrize("monitor", ["val_acc", "val_loss"])
def test_each_epoch_takes_the_better_weights_by_the_monitored_metric(tmp_path, monitor):
    cfg = _cfg(
        **{"train.ema": {"decay": 0.9}, "train.epochs": 3, "train.early_stopping.monitor": monitor}
    )
    fit(cfg, tmp_path)
    metric = monitor.removeprefix("val_")
    better = max if metric == "acc" else min
    for row in read_metrics(tmp_path):
        ema, raw = row[f"val_{metric}_ema"], row[f"val_{metric}_raw"]
        assert row[monitor] == better(ema, raw)
        taken = "ema" if row[monitor] == ema else "raw"
        assert (row["val_loss"], row["val_acc"]) == (
            row[f"val_loss_{taken}"],
            row[f"val_acc_{taken}"],
        )


def test_ema_is_validated_and_best_pt_holds_what_validated_best(tmp_path, cli):
    summary = fit(_cfg(**{"train.ema": {"decay": 0.9}, "train.epochs": 3}), tmp_path)
    rows = read_metrics(tmp_path)
    assert all(
        {"val_acc_raw", "val_loss_raw", "val_acc_ema", "val_loss_ema"} <= set(row) for row in rows
    )
    assert any(row["val_acc_ema"] != row["val_acc_raw"] for row in rows)
    assert summary.ema_decay == 0.9 and summary.best_weights in ("ema", "trained")
    best = checkpoint.load(tmp_path / "best.pt")
    assert best["epoch"] == summary.best_epoch
    assert best["ema"]["weights"] == summary.best_weights
    held = best["ema"]["average" if summary.best_weights == "ema" else "trained"]
    assert all(torch.equal(best["model"][k], v) for k, v in held.items())
    assert any(
        not torch.equal(best["ema"]["average"][k], v) for k, v in best["ema"]["trained"].items()
    )
    # eval reads the chosen weights without a flag, and finds the figure training validated
    result = cli("eval", "--ckpt", tmp_path / "best.pt", "--json")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["acc"] == pytest.approx(summary.best_metrics["val_acc"], abs=1e-9)


def test_the_summary_says_which_weights_best_pt_holds(cli, digits_config, tmp_path):
    off = ["--set", "train.ema.decay=0.999", "--set", "train.ema.warmup=false"]
    result = cli("train", digits_config, *off, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "[trained; ema 0." in result.stdout  # the epoch lines
    table = " ".join(result.stdout.replace("│", " ").split())  # its cells wrap
    assert "best.pt holds the trained weights (decay 0.999; the EMA validated 0." in table
    assert (
        "(best epoch restored, the trained weights)" in table
        or "(last epoch, the trained weights)" in table
    )


def test_a_too_slow_ema_is_noted_once_without_the_warm_up(cli, digits_config):
    result = cli("train", digits_config, "--set", "train.ema.decay=0.9999")
    assert result.exit_code == 0, result.output
    assert "train.ema.decay" not in result.stderr  # the warm-up makes any decay safe
    off = ["--set", "train.ema.warmup=false"]
    result = cli("train", digits_config, "--set", "train.ema.decay=0.9999", *off)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "train.ema.decay 0.9999" in line]
    assert len(notes) == 1 and "still holds 99% of the weights" in notes[0]
    result = cli("train", digits_config, "--set", "train.ema.decay=0.9", *off)
    assert "train.ema.decay" not in result.stderr


@pytest.mark.parametrize("batch", [5, 1, 8])
def test_mixup_and_cutmix_by_hand_any_batch_size(batch):
    images = torch.rand(batch, 1, 6, 6)
    labels = torch.arange(batch)
    mixup = Mixup(MixupConfig(alpha=0.5), seed=3)
    mixed, partners, lam = mixup(images, labels, epoch=1, step=2)
    assert 0 < lam < 1 and torch.equal(partners, labels.roll(1))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
    again = mixup(images, labels, epoch=1, step=2)  # the same (seed, epoch, step): the same draw
    assert again[2] == lam and torch.equal(again[0], mixed)
    cutmix = Mixup(MixupConfig(cutmix_alpha=1.0), seed=3)
    for step in range(20):
        pasted, partners, lam = cutmix(images, labels, epoch=1, step=step)
        from_partner = (pasted != images).any(1)  # (N, H, W): pixels taken from the partner
        own = (pasted == images).all(1)
        assert torch.equal(from_partner | own, torch.ones_like(own))
        if batch > 1:  # a share of 1 - lam of each image is its partner's, boxes clipped
            assert from_partner[0].float().mean().item() == pytest.approx(1 - lam, abs=1e-6)


def test_the_loss_is_the_mixed_loss_and_accuracy_counts_the_larger_share():
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    model = nn.Linear(4, 3)

    def mix(images, labels, epoch, step):
        return images, labels.roll(1), 0.3

    logits = model(x)
    loss_fn = nn.CrossEntropyLoss()
    expected = 0.3 * loss_fn(logits, y) + 0.7 * loss_fn(logits, y.roll(1))
    correct = (logits.argmax(1) == y.roll(1)).float().mean().item()  # the partner has 0.7
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_one_epoch(model, [(x, y)], optimizer, loss_fn, TrainConfig(), mix=mix)
    assert result["loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert result["acc"] == pytest.approx(correct)


def test_validation_and_the_gap_pass_are_never_mixed(tmp_path, monkeypatch):
    calls = []
    real = Mixup.__call__

    def counted(self, images, labels, epoch, step):
        calls.append((epoch, step))
        return real(self, images, labels, epoch, step)

    monkeypatch.setattr(Mixup, "__call__", counted)
    cfg = _cfg(**{"data.mixup": {"alpha": 0.4}, "train.epochs": 2})
    fit(cfg, tmp_path)
    steps = -(-1150 // 64)  # the training split's batches; val and train_eval are not mixed
    assert calls == [(epoch, step) for epoch in (1, 2) for step in range(1, steps + 1)]


def test_mixed_training_accuracy_is_marked(cli, digits_config):
    result = cli("train", digits_config, "--set", "data.mixup.alpha=0.2")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("(mixed)") == 2


class Killed(Exception):
    pass


@pytest.mark.parametrize("how", ["stopped mid-epoch", "killed after an epoch"])
def test_ema_mixup_and_balanced_sampler_resume_exactly(tmp_path, cli, how):
    cfg = _cfg(**ON, **{"data.sampler": "balanced"})
    fit(cfg, tmp_path / "whole")

    def listener(event):
        if how == "stopped mid-epoch" and isinstance(event, BatchEnd) and event.step == 7:
            return "a caller stops in epoch 1, at step 7"
        second = isinstance(event, EpochEnd) and event.row["epoch"] == 2
        if how == "killed after an epoch" and second:
            raise Killed  # the process dies with epoch 2 saved: what SIGKILL leaves

    if how == "killed after an epoch":
        with pytest.raises(Killed):
            fit(cfg, tmp_path / "parts", [listener])
    else:
        assert fit(cfg, tmp_path / "parts", [listener]).status == "stopped"
        assert checkpoint.load(tmp_path / "parts" / "last.pt")["partial"]["steps"] == 7
    result = cli("train", "--resume", tmp_path / "parts")
    assert result.exit_code == 0, result.output
    _same_run(tmp_path / "whole", tmp_path / "parts")


@pytest.mark.slow
def test_resume_after_sigkill_with_ema_mixup_and_balanced_sampler(tmp_path, write_config):
    import signal
    import subprocess
    import sys
    import time

    config = write_config(
        "name: ema\nseed: 2\ndevice: cpu\n"
        "data: {dataset: digits, batch_size: 33, sampler: balanced,\n"
        "       mixup: {alpha: 0.3, cutmix_alpha: 1.0}, augment: {random_crop: 1}}\n"
        "model: {name: cnn, channels: [8, 16], batch_norm: true}\n"
        "optim: {name: adam, lr: 0.003}\n"
        "train: {epochs: 6, deterministic: true, ema: {decay: 0.95, every: 2}}\n"
        "checkpoint: {interval: 0}\n"
    )
    run = [sys.executable, "-m", "dltrain", "train", str(config), "--out"]
    whole = subprocess.run([*run, str(tmp_path / "whole")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([*run, str(tmp_path / "parts")], stderr=subprocess.PIPE)
    while len(read_metrics(tmp_path / "parts")) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = subprocess.run(
        [sys.executable, "-m", "dltrain", "train", "--resume", str(tmp_path / "parts")],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    _same_run(tmp_path / "whole", tmp_path / "parts")


def _same_run(whole, parts):
    a, b = read_metrics(whole), read_metrics(parts)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_acc_raw", "lr"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["epoch"], key)
    w, p = checkpoint.load(whole / "last.pt"), checkpoint.load(parts / "last.pt")
    for key in w["model"]:  # the average
        torch.testing.assert_close(w["model"][key], p["model"][key], rtol=0, atol=1e-6)
    for key in w["ema"]["trained"]:  # and the trained weights
        torch.testing.assert_close(
            w["ema"]["trained"][key], p["ema"]["trained"][key], rtol=0, atol=1e-6
        )
    assert w["ema"]["steps"] == p["ema"]["steps"]
