"""The shape the other features build on: one event channel from the engine to its caller (a
caller's stop comes back through it), one checkpoint loader, --nproc passing the user's own
arguments on, and one name (--out, alias --run-dir) for where outputs go."""

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from dltrain import files
from dltrain.errors import DltrainError
from dltrain.reporting.events import BatchEnd, EpochEnd, EpochStart
from dltrain.reporting.runs import read_metrics
from dltrain.training import checkpoint, saving
from dltrain.training.engine import fit
from tests.test_training import _cfg


def _stop_at(kind: type, epoch: int, step: int = 0, reason: str = "enough, says the caller"):
    """A listener that asks to stop at `kind` (BatchEnd or EpochEnd) of `epoch` (its `step`)."""
    seen = {"epoch": 0}

    def listener(event):
        if isinstance(event, EpochStart):
            seen["epoch"] = event.epoch
        at_step = isinstance(event, BatchEnd) and event.step == step
        at_epoch = isinstance(event, EpochEnd) and event.row["epoch"] == epoch
        if isinstance(event, kind) and seen["epoch"] == epoch and (at_step or at_epoch):
            return reason
        return None

    return [listener]


def test_a_caller_stops_at_the_end_of_an_epoch(tmp_path):
    summary = fit(_cfg(), tmp_path, _stop_at(EpochEnd, 2))
    assert summary.status == "stopped" and summary.stop_reason == "enough, says the caller"
    assert summary.epochs_run == 2 and [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    assert checkpoint.load(tmp_path / "last.pt")["partial"] is None


def test_a_caller_stops_mid_epoch_and_the_run_resumes_exactly(tmp_path, cli):
    cfg = _cfg()
    fit(cfg, tmp_path / "whole")
    summary = fit(cfg, tmp_path / "parts", _stop_at(BatchEnd, 3, step=5))
    assert summary.status == "stopped" and summary.epochs_run == 2
    saved = checkpoint.load(tmp_path / "parts" / "last.pt")
    assert saved["epoch"] == 2 and saved["partial"]["epoch"] == 3
    assert saved["partial"]["steps"] == 5
    result = cli("train", "--resume", tmp_path / "parts")
    assert result.exit_code == 0, result.output
    assert "after epoch 3, step 5" in result.stderr
    whole, parts = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "parts")
    assert [r["epoch"] for r in parts] == [1, 2, 3, 4, 5]
    for a, b in zip(whole, parts, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["epoch"], key)
    w = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    p = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)["model"]
    for key in w:
        torch.testing.assert_close(w[key], p[key], rtol=0, atol=1e-6)


def test_nproc_passes_the_users_own_arguments_on(cli, digits_config, tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(
        "dltrain.training.distributed.launch", lambda n, args: launched.append((n, args))
    )
    out = tmp_path / "run"
    given = ["--set", "train.epochs=1", "--quiet", "--out", out, "--force", "--device", "cpu"]
    result = cli("train", digits_config, *given[:2], "--nproc", "2", *given[2:])
    assert result.exit_code == 0, result.output
    result = cli("finetune", digits_config, "--from", "imagenet", "--nproc=3", "--json")
    assert result.exit_code == 0, result.output
    assert launched == [
        (2, ["train", str(digits_config), *map(str, given)]),
        (3, ["finetune", str(digits_config), "--from", "imagenet", "--json"]),
    ]


@pytest.mark.slow
def test_out_and_run_dir_are_one_option_everywhere(cli, digits_config, write_config, tmp_path):
    one = write_config(digits_config.read_text().replace("epochs: 2", "epochs: 1"), "one.yaml")
    two = write_config(one.read_text().replace("hidden: [64]", "hidden: [32]"), "two.yaml")
    lr = "optim.lr=loguniform(1e-3, 1e-2)"
    for flag in ("--out", "--run-dir"):
        runs = [
            ("train", one, flag, tmp_path / flag / "train"),
            ("compare", one, two, "--seeds", "1", flag, tmp_path / flag / "compare"),
            ("sweep", one, "--trials", "1", "--param", lr, flag, tmp_path / flag / "sweep"),
        ]
        for args in runs:
            result = cli(*args)
            assert result.exit_code == 0, (args, result.output)
        assert (tmp_path / flag / "train" / "summary.json").is_file()
        assert (tmp_path / flag / "compare" / "compare.json").is_file()
        assert (tmp_path / flag / "sweep" / "sweep.csv").is_file()
        ft = cli("finetune", one, "--from", tmp_path / flag / "train" / "best.pt", flag,
                 tmp_path / flag / "finetune")  # fmt: skip
        assert ft.exit_code == 0, ft.output
        summary = json.loads((tmp_path / flag / "finetune" / "summary.json").read_text())
        assert summary["parent"]["source"] == "checkpoint"


def test_device_is_an_override_of_the_saved_config(tmp_path, cli):
    fit(_cfg(**{"train.epochs": 1}), tmp_path)
    ckpt = tmp_path / "best.pt"
    result = cli("eval", "--ckpt", ckpt, "--device", "gpu")
    assert result.exit_code == 2
    assert "device: got 'gpu'; expected auto, cpu, cuda, cuda:N or mps (from --set)" in (
        result.stderr
    )
    saved = checkpoint.open_saved(ckpt, ["device=cpu", "data.batch_size=7"])
    assert saved.cfg.device == "cpu" and saved.cfg.data.batch_size == 7
    model, device = saved.model()
    assert device.type == "cpu" and not model.training
    if not torch.cuda.is_available():
        with pytest.raises(DltrainError, match="CUDA is not available"):
            checkpoint.open_saved(ckpt, ["device=cuda"]).model()


def test_the_engine_imports_neither_plots_nor_the_cli():
    code = (
        "import sys, dltrain.training.engine; "
        "print(sorted(m for m in sys.modules if m.startswith(('dltrain.reporting.plots', "
        "'dltrain.cli', 'matplotlib'))))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


def test_the_overfitting_note_reaches_the_summary(cli, digits_config, tmp_path, monkeypatch):
    note = "val accuracy flat since epoch 1 while train accuracy rose 9 points: overfitting"
    monkeypatch.setattr(
        "dltrain.training.engine.overfitting_note", lambda rows: note if len(rows) == 2 else None
    )
    result = cli("train", digits_config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert f"note: {note}" in " ".join(result.stderr.split())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["overfitting"] == note
    assert "overfitting" in result.stdout.split("summary")[-1]


def _writes(monkeypatch) -> list:
    written = []
    real = files.save

    def save(payload, path):
        written.append((path.name, payload["epoch"]))
        return real(payload, path)

    monkeypatch.setattr(files, "save", save)
    return written


def test_checkpoints_wait_in_memory_and_are_written_at_the_end(tmp_path, monkeypatch):
    """Within checkpoint.interval the epochs' checkpoints are copies in memory: a 6-epoch run
    writes each file once, at the end, and the files are those an every-epoch run writes."""
    writes = _writes(monkeypatch)
    wander = {"optim.lr": 0.05, "schedule.name": "none", "train.epochs": 6}
    summary = fit(_cfg(**wander, **{"checkpoint.interval": 1000}), tmp_path / "kept")
    best = summary.best_epoch
    assert best != 6, "pick a config whose last epoch is not the best"
    # best.pt is staged under its epoch, then last.pt commits (saving.flush)
    assert writes == [(f".best-{best}.pt", best), ("last.pt", 6)]
    writes.clear()
    fit(_cfg(**wander), tmp_path / "every")  # interval 0: every epoch
    assert len([w for w in writes if w[0] == "last.pt"]) == 6
    for name in ("last.pt", "best.pt"):
        kept = checkpoint.load(tmp_path / "kept" / name)
        every = checkpoint.load(tmp_path / "every" / name)
        assert kept["epoch"] == every["epoch"]
        timeless = [
            {k: v for k, v in row.items() if k != "seconds"}
            for row in (kept["metrics"], every["metrics"])
        ]
        assert timeless[0] == timeless[1]
        for key, value in every["model"].items():
            assert torch.equal(kept["model"][key], value), (name, key)
        assert kept["optimizer"]["state"].keys() == every["optimizer"]["state"].keys()


def test_a_stop_or_a_failure_writes_what_waits(tmp_path, monkeypatch):
    writes = _writes(monkeypatch)
    cfg = _cfg(**{"checkpoint.interval": 1000})
    assert fit(cfg, tmp_path / "stopped", _stop_at(EpochEnd, 2)).status == "stopped"
    assert checkpoint.load(tmp_path / "stopped" / "last.pt")["epoch"] == 2
    assert ("last.pt", 2) in writes or ("last.pt", 2, "best.pt") in writes

    def nan_in_epoch_3(event):
        third = len(read_metrics(tmp_path / "nan")) == 2
        if isinstance(event, BatchEnd) and event.step == 1 and third:
            event.loss.fill_(float("nan"))  # the tally's copy: the fold finds it

    with pytest.raises(DltrainError, match="checkpoints hold epoch 2"):
        fit(cfg, tmp_path / "nan", [nan_in_epoch_3])
    assert checkpoint.load(tmp_path / "nan" / "last.pt")["epoch"] == 2

    def bug_in_epoch_3(event):
        if isinstance(event, EpochStart) and event.epoch == 3:
            raise RuntimeError("a caller's bug")

    with pytest.raises(RuntimeError, match="a caller's bug"):
        fit(cfg, tmp_path / "bug", [bug_in_epoch_3])
    assert checkpoint.load(tmp_path / "bug" / "last.pt")["epoch"] == 2


def test_a_waiting_best_is_written_once_the_interval_passes_without_last(tmp_path, monkeypatch):
    """save_last off: an epoch that checkpoints nothing still writes the best.pt that waits
    once checkpoint.interval has passed, so a kill loses no more than it says."""
    writes = _writes(monkeypatch)
    s = SimpleNamespace(
        files=SimpleNamespace(write=True), run_dir=tmp_path, cfg=_cfg(**{"checkpoint.interval": 30})
    )
    waiting = {"epoch": 3, "model": {"w": torch.ones(2)}}
    loop = SimpleNamespace(pending={"best.pt": waiting}, written=time.perf_counter())
    saving.keep(s, loop, {}, [])  # within the interval: it waits
    assert writes == [] and loop.pending == {"best.pt": waiting}
    loop.written -= 31
    saving.keep(s, loop, {}, [])
    assert writes == [("best.pt", 3)] and loop.pending == {}
    assert files.read(tmp_path / "best.pt")["epoch"] == 3
