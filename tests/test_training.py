"""Optimization options, schedules, restore_best, checkpoints and exact resume."""

import json

import pytest
import torch
from torch import nn

from dltrain.config import Config, OptimConfig, ScheduleConfig, TrainConfig, validate
from dltrain.optim import build_optimizer, build_schedule, param_groups, warmup_steps
from dltrain.reporting.events import EpochEnd
from dltrain.reporting.runs import read_metrics
from dltrain.training.engine import fit
from dltrain.training.epoch import train_one_epoch


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.head_name = "3"
    return model


def _lrs(schedule_cfg, epochs=4, steps=5, metrics=None):
    model = _model()
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1))
    schedule = build_schedule(optimizer, schedule_cfg, epochs, steps)
    seen = []
    for epoch in range(epochs):
        for _ in range(steps):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch({"val_loss": (metrics or [1.0] * epochs)[epoch], "val_acc": 0.5})
    return seen


def test_schedules_follow_their_shape():
    assert set(_lrs(ScheduleConfig(name="none"))) == {0.1}
    step = _lrs(ScheduleConfig(name="step", step_size=2, gamma=0.5))
    assert step[0] == step[9] == 0.1 and step[10] == step[19] == 0.05
    multi = _lrs(ScheduleConfig(name="multistep", milestones=[1, 3], gamma=0.1))
    assert multi[4] == 0.1 and multi[5] == pytest.approx(0.01) and multi[15] == pytest.approx(1e-3)
    cosine = _lrs(ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=0.001))
    assert cosine[0] == pytest.approx(0.02) and cosine[4] == pytest.approx(0.1)  # linear warmup
    assert all(a >= b for a, b in zip(cosine[4:], cosine[5:], strict=False))  # then decays
    assert 0.001 < cosine[-1] < 0.003
    onecycle = _lrs(ScheduleConfig(name="onecycle", max_lr_mult=10, pct_start=0.25))
    assert max(onecycle) == pytest.approx(1.0) and onecycle.index(max(onecycle)) in (4, 5)
    assert onecycle[0] < 0.1 and onecycle[-1] < 0.01
    plateau = _lrs(ScheduleConfig(name="plateau", patience=0, factor=0.5), metrics=[1, 1, 1, 1])
    assert plateau[5] == 0.1 and plateau[10] == 0.05 and plateau[15] == 0.025


@pytest.mark.parametrize(
    "epochs, per_epoch, total, steps",
    [
        (0, 8, 240, 0),  # no warmup asked: none
        (2, 8, 240, 48),  # 1,000 images at batch 128: 16 steps -> a fifth of 240
        (2, 8, 2400, 100),  # a longer run: the floor of 100 steps
        (2, 390, 11700, 780),  # 50,000 images: 2 epochs are already more
        (1, 5, 20, 5),  # a tiny run: its epoch, more than a fifth of it
    ],
)
def test_warmup_holds_a_floor_in_steps(epochs, per_epoch, total, steps):
    assert warmup_steps(epochs, per_epoch, total) == steps


def test_no_decay_for_bias_and_norm_and_head_lr():
    model = _model()
    groups = param_groups(
        model,
        OptimConfig(weight_decay=0.1, no_decay_bias_norm=True, lr=1.0),
        head_name="3",
        head_lr_mult=10,
    )
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_param[id(model[0].weight)] == (1.0, 0.1)
    assert by_param[id(model[0].bias)] == (1.0, 0.0)
    assert by_param[id(model[1].weight)] == (1.0, 0.0)  # BatchNorm
    assert by_param[id(model[3].weight)] == (10.0, 0.1)
    assert by_param[id(model[3].bias)] == (10.0, 0.0)
    assert len(by_param) == len(list(model.parameters()))


def _batches(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_accumulation_equals_one_big_batch():
    x, y = _batches()

    def run(batches, accumulate):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        train_one_epoch(
            model, batches, optimizer, nn.CrossEntropyLoss(), TrainConfig(accumulate=accumulate)
        )
        return [p.detach().clone() for p in model.parameters()]

    whole = run([(x, y)], 1)
    halves = run([(x[:16], y[:16]), (x[16:], y[16:])], 2)
    for a, b in zip(whole, halves, strict=True):
        torch.testing.assert_close(a, b)


def test_grad_clip_bounds_the_update():
    x, y = _batches()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(
        model, [(x * 100, y)], optimizer, nn.CrossEntropyLoss(), TrainConfig(grad_clip=0.01)
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() == pytest.approx(0.01, rel=1e-4)


def test_label_smoothing_is_the_training_loss():
    x, y = _batches()
    model = nn.Sequential(nn.Linear(4, 3))
    expected = nn.functional.cross_entropy(model(x), y, label_smoothing=0.2).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-12)
    metrics = train_one_epoch(
        model, [(x, y)], optimizer, nn.CrossEntropyLoss(label_smoothing=0.2), TrainConfig()
    )
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)


SMALL = {
    "name": "t",
    "seed": 3,
    "device": "cpu",
    "data": {
        "dataset": "digits",
        "val_split": 0.2,
        "batch_size": 64,
        "augment": {"random_crop": 1},
    },
    "model": {"name": "mlp", "hidden": [48], "dropout": 0.2},
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "train": {
        "epochs": 5,
        "deterministic": True,
        "early_stopping": {"monitor": "val_loss", "patience": 10},
    },
    "checkpoint": {"interval": 0},  # every epoch written: the kills and reads here need it
}


def _cfg(**changes):
    data = json.loads(json.dumps(SMALL))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return validate(data)


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_precisions_train_on_cpu(tmp_path, precision):
    summary = fit(_cfg(**{"train.precision": precision, "train.epochs": 2}), tmp_path)
    assert summary.facts.precision == {"32": "float32", "bf16": "bfloat16"}[precision]
    assert summary.best_metrics["val_acc"] > 0.5


def test_auto_precision_is_fp32_on_cpu(tmp_path):
    assert fit(_cfg(**{"train.epochs": 1}), tmp_path).facts.precision == "float32"


@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_hands_over_the_best_epoch(tmp_path, restore):
    # A learning rate that is too high makes validation loss wander, so the last epoch is
    # rarely the best one; the test picks a seed where it is not.
    cfg = _cfg(
        **{
            "optim.lr": 0.05,
            "schedule.name": "none",
            "train.epochs": 6,
            "train.early_stopping.restore_best": restore,
        }
    )
    summary = fit(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert summary.best_epoch != rows[-1]["epoch"], "pick a config whose last epoch is worse"
    best = rows[summary.best_epoch - 1]
    expected = best if restore else rows[-1]
    assert summary.final_val["loss"] == pytest.approx(expected["val_loss"], rel=1e-9)
    assert summary.restored_best is restore
    best_pt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best_pt["epoch"] == summary.best_epoch


def test_checkpoints_hold_everything_and_load_weights_only(tmp_path):
    fit(_cfg(**{"train.epochs": 2}), tmp_path)
    for name in ("best.pt", "last.pt"):
        payload = torch.load(tmp_path / name, weights_only=True)
        assert {
            "model",
            "optimizer",
            "schedule",
            "scaler",
            "early_stopping",
            "best_metric",
            "rng",
            "loader_rng",
            "config",
            "class_names",
            "version",
            "epoch",
            "global_step",
            "data_info",
        } <= set(payload)
        assert set(payload["rng"]) == {"torch", "cuda", "numpy", "python"}
        Config.model_validate(payload["config"])
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 2 * 18  # 1150 / 64 -> 18 batches


def test_best_pt_is_last_pt_of_its_epoch_and_survives_later_epochs(tmp_path, monkeypatch):
    """An epoch that is both last and best is written once (best.pt links to last.pt); the
    next epoch's last.pt is a new file, so best.pt keeps the best epoch. Without hard links
    (some file systems), best.pt is a copy with the same bytes."""
    seen = []

    def progress(event):
        if isinstance(event, EpochEnd):
            last, best = tmp_path / "last.pt", tmp_path / "best.pt"
            seen.append((event.improved, best.exists() and last.samefile(best)))

    cfg = _cfg(**{"optim.lr": 0.05, "schedule.name": "none", "train.epochs": 6})
    summary = fit(cfg, tmp_path, [progress])
    assert [same for _, same in seen] == [improved for improved, _ in seen]
    assert not seen[-1][0], "pick a config whose last epoch is not the best"
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == summary.best_epoch
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 6

    def no_links(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr("os.link", no_links)
    copy_dir = tmp_path / "copy"
    fit(_cfg(**{"train.epochs": 1}), copy_dir)
    last, best = copy_dir / "last.pt", copy_dir / "best.pt"
    assert not last.samefile(best) and last.read_bytes() == best.read_bytes()
    assert not list(copy_dir.glob(".*tmp*"))


class Interrupt(Exception):
    pass


def _stop_after(epoch):
    def progress(event):
        if isinstance(event, EpochEnd) and event.row["epoch"] == epoch:
            raise Interrupt

    return [progress]


def test_resume_equals_uninterrupted(tmp_path, cli):
    cfg = _cfg()
    fit(cfg, tmp_path / "whole")
    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "parts", _stop_after(2))
    # Simulate the crash losing an epoch's metrics row written after the checkpoint.
    assert [r["epoch"] for r in read_metrics(tmp_path / "parts")] == [1, 2]
    result = cli("train", "--resume", tmp_path / "parts")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr
    whole, parts = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "parts")
    assert [r["epoch"] for r in parts] == [1, 2, 3, 4, 5]
    for a, b in zip(whole, parts, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["epoch"], key)
    w = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    p = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)
    for key in w["model"]:
        torch.testing.assert_close(w["model"][key], p["model"][key], rtol=0, atol=1e-6)
    assert w["early_stopping"] == p["early_stopping"]
    assert w["schedule"]["last_epoch"] == p["schedule"]["last_epoch"]
    s_whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    s_parts = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert s_whole["best_epoch"] == s_parts["best_epoch"]


def test_resume_keeps_early_stopping_state(tmp_path, cli):
    cfg = _cfg(
        **{
            "optim.lr": 0.05,
            "schedule.name": "none",
            "train.epochs": 30,
            "train.early_stopping.patience": 2,
        }
    )
    whole = fit(cfg, tmp_path / "whole")
    assert whole.status == "stopped_early"
    stop = whole.epochs_run
    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "parts", _stop_after(stop - 1))
    result = cli("train", "--resume", tmp_path / "parts" / "last.pt")
    assert result.exit_code == 0, result.output
    parts = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert parts["epochs_run"] == stop and parts["stop_reason"] == whole.stop_reason
    assert "stopped at epoch" in result.stdout
    again = cli("train", "--resume", tmp_path / "parts")
    assert again.exit_code == 0 and "nothing to resume" in again.stderr


def test_resume_needs_no_config_and_refuses_one(cli, tmp_path, digits_config):
    result = cli("train", digits_config, "--resume", tmp_path)
    assert result.exit_code == 1 and "drop CONFIG" in result.stderr
    result = cli("train", "--resume", tmp_path / "missing")
    assert result.exit_code == 1 and "no such run folder" in result.stderr


def test_optimizer_steps_are_fused_where_torch_has_them():
    fused = {
        name: build_optimizer(_model(), OptimConfig(name=name)).defaults.get("fused")
        for name in ("sgd", "adam", "adamw", "rmsprop")
    }
    cpu = True if torch.__version__ >= "2.4" else None  # torch's fused CPU kernels: 2.4 on
    assert fused == {"sgd": cpu, "adam": cpu, "adamw": cpu, "rmsprop": None}


def test_the_gap_pass_reads_at_most_a_tenth_of_the_training_split(tmp_path):
    from dltrain.training.session import build

    for asked, expected in ((1024, 115), (50, 50)):  # digits: 1,150 training images here
        s = build(_cfg(**{"train.train_eval_size": asked}), tmp_path / str(asked))
        assert len(s.splits.train) == 1150
        assert len(s.train_eval_batches.split) == expected
