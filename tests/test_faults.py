"""Faults done for real: kills, signals, NaN, full disk, damaged and malicious files, OOM.

The subprocess tests run the real CLI in a child process; a few lines of Python run before
it (`hook`) to pause or signal at the exact moment a test needs.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dltrain.config import validate
from dltrain.errors import DltrainError
from dltrain.reporting.events import BatchEnd
from dltrain.reporting.runs import read_metrics
from dltrain.training import checkpoint
from dltrain.training.engine import fit

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
name: faults
seed: 1
device: cpu
data: {dataset: digits, val_split: 0.2, batch_size: 16, augment: {random_crop: 1}}
model: {name: mlp, hidden: [64], dropout: 0.2}
optim: {name: adam, lr: 2e-3}
schedule: {name: cosine}
train: {epochs: 3, deterministic: true}
checkpoint: {interval: 0}  # every epoch written: what these crashes test
"""


def start(args, hook: str = "", **kwargs) -> subprocess.Popen:
    """The real CLI in a child process, after `hook` (Python source) has run."""
    code = (
        textwrap.dedent(hook) + "\nimport sys\nfrom dltrain.cli import main\n"
        f"sys.argv = ['dltrain', *{[str(a) for a in args]!r}]\nmain()\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def run(args, hook: str = "") -> subprocess.CompletedProcess:
    proc = start(args, hook)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: the same config trained without any fault."""
    folder = tmp_path_factory.mktemp("whole")
    (folder / "config.yaml").write_text(CONFIG)
    result = run(["train", folder / "config.yaml", "--run-dir", folder / "run"])
    assert result.returncode == 0, result.stderr
    return folder / "run"


def assert_same_run(a: Path, b: Path) -> None:
    rows_a, rows_b = read_metrics(a), read_metrics(b)
    assert [r["epoch"] for r in rows_b] == [r["epoch"] for r in rows_a]
    for x, y in zip(rows_a, rows_b, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["epoch"], key)
    wa = torch.load(a / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "last.pt", weights_only=True)["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)


# 1 -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_while_saving_keeps_previous_checkpoint(tmp_path, config, uninterrupted):
    ready = tmp_path / "in-save"
    hook = f"""
        import os, time
        real_replace, saves = os.replace, []
        def paused_replace(src, dst):
            if str(dst).endswith("last.pt"):
                saves.append(dst)
                if len(saves) == 2:  # epoch 2's last.pt: the temp file is fully written
                    open({str(ready)!r}, "w").close()
                    time.sleep(120)
            return real_replace(src, dst)
        os.replace = paused_replace
    """
    run_dir = tmp_path / "run"
    proc = start(["train", config, "--run-dir", run_dir], hook)
    wait_for(ready, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in run_dir.glob(".last.pt.tmp-*")]  # the unfinished temp file
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 1  # the previous one, intact
    result = run(["train", "--resume", run_dir])
    assert result.returncode == 0, result.stderr
    assert not list(run_dir.glob(".*tmp*"))
    assert_same_run(uninterrupted, run_dir)


# 2 -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_epoch_saves_and_resumes(tmp_path, config, uninterrupted, signum, code):
    mid_epoch, second = tmp_path / "mid-epoch", tmp_path / "second-signal"
    hook = f"""
        import os, signal, time
        import dltrain.cli.report
        calls = []
        real_batch = dltrain.cli.report.TrainReport.batch
        def on_batch(self, info):
            calls.append(1)
            if len(calls) == 72 + 20:  # epoch 2, step 20 (72 steps per epoch)
                open({str(mid_epoch)!r}, "w").close()
            time.sleep(0.002)
            return real_batch(self, info)
        dltrain.cli.report.TrainReport.batch = on_batch
        real_replace = os.replace
        def replace(src, dst):
            if os.path.exists({str(mid_epoch)!r}) and str(dst).endswith("last.pt"):
                open({str(second)!r}, "w").close()
                os.kill(os.getpid(), {int(signum)})  # a second signal during the save
            return real_replace(src, dst)
        os.replace = replace
    """
    run_dir = tmp_path / "run"
    proc = start(["train", config, "--run-dir", run_dir], hook)
    wait_for(mid_epoch, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert second.exists()
    name = signal.Signals(signum).name
    assert f"interrupted: stopped by {name} at epoch 2, step" in err
    assert f"resume with: dltrain train --resume {run_dir}" in err
    payload = checkpoint.load(run_dir / "last.pt")
    assert payload["epoch"] == 1 and payload["partial"]["epoch"] == 2
    assert 20 <= payload["partial"]["steps"] < 72
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    result = run(["train", "--resume", run_dir])
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr and "epoch 2, step" in result.stderr
    assert_same_run(uninterrupted, run_dir)


# 3 -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(tmp_path, config, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start(["train", config, "--run-dir", run_dir])
    wait_for(run_dir / "best.pt", proc)  # epoch 1 is saved
    while len(read_metrics(run_dir)) < 2 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    result = run(["train", "--resume", run_dir])
    assert result.returncode == 0, result.stderr
    assert_same_run(uninterrupted, run_dir)


# 4 -----------------------------------------------------------------------------------------
def _small(**train):
    return validate(
        {
            "name": "nan",
            "device": "cpu",
            "data": {"dataset": "digits", "batch_size": 64, "val_split": 158},  # 1280 = 20 x 64
            "model": {"name": "mlp", "hidden": [32]},
            "train": {"epochs": 3, **train},
            "checkpoint": {"interval": 0},
        }
    )


def test_nan_loss_stops_at_its_step_and_saves_no_nan(tmp_path, monkeypatch):
    from dltrain.data import Batches

    real_convert, calls = Batches.convert, []

    def poisoned(self, images):
        x = real_convert(self, images)
        if self.shuffle:
            calls.append(1)
            if len(calls) == 20 + 3:  # epoch 2 (20 batches per epoch), step 3
                x = x * float("nan")
        return x

    monkeypatch.setattr(Batches, "convert", poisoned)
    with pytest.raises(DltrainError) as caught:
        fit(_small(), tmp_path)
    message = str(caught.value)
    assert "loss became NaN/Inf at epoch 2, step 3" in message
    assert "lower optim.lr" in message and "train.grad_clip" in message
    for name in ("last.pt", "best.pt"):
        payload = checkpoint.load(tmp_path / name)
        assert payload["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in payload["model"].values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "NaN" in summary["stop_reason"]


def test_absurd_learning_rate_is_caught_through_the_cli(cli, tmp_path, write_config):
    config = write_config(
        "data: {dataset: digits, batch_size: 64}\nmodel: {name: mlp}\n"
        "optim: {name: sgd, lr: 1e12, momentum: 0.9}\ndevice: cpu\n"
    )
    result = cli("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "loss became NaN/Inf at epoch 1, step" in line
    assert not (tmp_path / "run" / "last.pt").exists()


# 5 -----------------------------------------------------------------------------------------
def test_disk_full_on_save_is_one_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    real_save, saves = torch.save, []

    def full_disk(obj, handle, *args, **kwargs):
        saves.append(1)
        # Epoch 1 wrote last.pt once (best.pt links to it); epoch 2 hits a full disk.
        if len(saves) > 1:
            handle.write(b"partial bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DltrainError) as caught:
        fit(_small(), tmp_path)
    assert "No space left on device (the disk is full: free some space)" in str(caught.value)
    assert "\n" not in str(caught.value)
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "last.pt")["epoch"] == 1
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == 1
    assert not list(tmp_path.glob(".*tmp*"))


# 6, 7 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    fit(_small(epochs=2), folder / "run")
    return folder / "run"


def _bad_files(folder: Path, marker: Path) -> dict:
    truncated, garbage, evil = folder / "truncated.pt", folder / "garbage.pt", folder / "evil.pt"
    garbage.write_bytes(random.Random(0).randbytes(2048))

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "dltrain-checkpoint", "model": Evil()}, evil)
    return {"truncated": truncated, "garbage": garbage, "evil": evil}


def _commands(path: Path, config: Path, image: Path):
    return {
        "eval": ["eval", "--ckpt", path],
        "predict": ["predict", "--ckpt", path, image],
        "finetune": ["finetune", config, "--from", path, "--run-dir", path.parent / "ft"],
        "resume": ["train", "--resume", path],
    }


@pytest.mark.parametrize("kind", ["truncated", "garbage", "evil"])
@pytest.mark.parametrize("command", ["eval", "predict", "finetune", "resume"])
def test_damaged_or_malicious_checkpoint_is_one_line(cli, tmp_path, trained, config, kind, command):
    from PIL import Image

    marker = tmp_path / "marker"
    files = _bad_files(tmp_path, marker)
    blob = (trained / "last.pt").read_bytes()
    files["truncated"].write_bytes(blob[: len(blob) // 2])
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    path = files[kind]
    result = cli(*_commands(path, config, image)[command])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines
    expected = "refused to load" if kind == "evil" else "damaged"
    assert expected in lines[0]
    assert not marker.exists()


def test_pretrained_path_refuses_malicious_file(tmp_path, write_config, cli):
    marker = tmp_path / "marker"
    evil = _bad_files(tmp_path, marker)["evil"]
    config = write_config(f"model: {{name: mlp, pretrained: {evil}}}\ndevice: cpu\n")
    result = cli("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 1 and "not loaded for safety" in result.stderr
    assert not marker.exists()


def test_resume_falls_back_to_intact_checkpoint(cli, tmp_path, trained):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    (run_dir / "last.pt").write_bytes(b"garbage")
    best_epoch = checkpoint.load(run_dir / "best.pt")["epoch"]
    result = cli("train", "--resume", run_dir, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    assert f"resuming from {run_dir / 'best.pt'} (epoch {best_epoch}) instead" in result.stderr
    assert [r["epoch"] for r in read_metrics(run_dir)] == list(range(1, 4))


def test_resume_survives_a_half_written_metrics_line(cli, tmp_path, trained):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    with open(run_dir / "metrics.csv", "a") as handle:
        handle.write("3,0.12")  # killed while appending epoch 3's row
    result = cli("train", "--resume", run_dir, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]


def test_bare_state_dict_goes_to_pretrained_not_finetune(cli, tmp_path, config):
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(3)}, bare)
    result = cli("finetune", config, "--from", bare, "--run-dir", tmp_path / "ft")
    assert result.exit_code == 1
    assert "not a dltrain checkpoint" in result.stderr
    assert "model.pretrained" in result.stderr


# 8, 9 --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x00\x01\x02binary\xff\xfe", "not a text file"),
        (b"model: {name: mlp\n", "line 2, column 1"),
        (b"a: !!python/name:os.system\n", "tag !!python/name:os.system is not allowed"),
        (b"a: !!python/object/new:os.system [ls]\n", "is not allowed"),
    ],
)
def test_unreadable_yaml_is_one_line(cli, tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    result = cli("train", path)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_bad_values_all_reported_before_any_data(cli, tmp_path, write_config):
    config = write_config(f"""\
        data: {{dataset: mnist, root: {tmp_path / "nothing"}, download: true, batch_size: 0,
               val_split: 1.5}}
        model: {{name: mlp, pretrained: imagenet}}
        optim: {{lr: -0.1}}
        train: {{early_stopping: {{patience: -1}}}}
        device: tpu
        """)
    result = cli("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    found = " ".join(lines)
    for path in (
        "data.batch_size",
        "data.val_split",
        "optim.lr",
        "patience",
        "device",
        "model.pretrained",
    ):
        assert path in found, path
    assert len(lines) == 6
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "run").exists()


def test_alexnet_on_tiny_images_is_a_config_error(cli, write_config):
    result = cli("config", "show", write_config("model: {name: alexnet}\n"))
    assert result.exit_code == 2
    assert (
        "model.name: alexnet (small_input true) needs images of at least 15x15 px, the data "
        "has 8x8; set data.resize: 15 (or more), or use cnn or resnet18" in result.stderr
    )


def test_config_min_sizes_match_the_models():
    from dltrain.config import ModelConfig
    from dltrain.data import DataInfo
    from dltrain.models import build_model
    from dltrain.models.facts import COURSE

    for small, smallest in COURSE["alexnet"]["min_size"].items():
        cfg = ModelConfig(name="alexnet", small_input=small)
        info = DataInfo("x", ["a", "b"], 3, (smallest, smallest), [0.5] * 3, [0.5] * 3)
        model = build_model(info, cfg).eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, smallest, smallest))  # the real layers take this size
            with pytest.raises(RuntimeError):  # and not one pixel less
                model(torch.zeros(1, 3, smallest - 1, smallest - 1))
        with pytest.raises(DltrainError):
            build_model(info.with_(image_size=(smallest - 1, smallest - 1)), cfg)


# 11 ----------------------------------------------------------------------------------------
def test_paths_that_are_wrong_are_one_line(cli, tmp_path, config, trained):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["eval", "--ckpt", tmp_path], "is a folder; give a checkpoint file"),
        (["eval", "--ckpt", tmp_path / "missing.pt"], "checkpoint not found"),
        (["train", config, "--run-dir", a_file], "is a file; give a folder"),
        (["train", config, "--run-dir", a_file / "sub"], "cannot write the run folder"),
        (["train", tmp_path / "missing.yaml"], "config file not found"),
        (["train", config, "--run-dir", trained], "already holds a run"),
        (
            [
                "train",
                config,
                "--set",
                f"data.root={a_file}",
                "--set",
                "data.dataset=mnist",
                "--run-dir",
                tmp_path / "r1",
            ],
            "is a file; point it at the folder",
        ),
        (
            [
                "train",
                config,
                "--set",
                f"data.root={a_file}",
                "--set",
                "data.dataset=imagefolder",
                "--run-dir",
                tmp_path / "r2",
            ],
            "is a file, not a folder",
        ),
        (
            [
                "train",
                config,
                "--set",
                f"data.root={tmp_path / 'none'}",
                "--set",
                "data.dataset=imagefolder",
                "--run-dir",
                tmp_path / "r3",
            ],
            "folder not found",
        ),
    ]
    for args, expected in cases:
        result = cli(*args)
        assert result.exit_code != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, lines)


def test_force_replaces_an_existing_run(cli, tmp_path, config):
    run_dir = tmp_path / "run"
    assert cli("train", config, "--run-dir", run_dir, "--set", "train.epochs=1").exit_code == 0
    (run_dir / "eval-val.json").write_text("{}")
    result = cli("train", config, "--run-dir", run_dir, "--set", "train.epochs=2", "--force")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
    assert not (run_dir / "eval-val.json").exists()


# 12 ----------------------------------------------------------------------------------------
def test_corrupted_cifar_pickle_is_named(tmp_path, monkeypatch):
    import torchvision

    from dltrain.config import DataConfig
    from dltrain.data import build_splits
    from tests.formats import write_cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    folder = write_cifar(tmp_path, 10, n_train=50, n_test=10)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DltrainError, match="could not read the files in .*cifar-10-batches-py"):
        build_splits(DataConfig(dataset="cifar10", root=str(tmp_path), download=False), seed=0)


def test_image_folder_with_an_empty_class(tmp_path):
    from dltrain.config import DataConfig
    from dltrain.data import build_splits
    from tests.formats import write_pngs

    write_pngs(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "c").mkdir()
    with pytest.raises(DltrainError, match="class folder.*c in .* hold no readable images"):
        build_splits(DataConfig(dataset="imagefolder", root=str(tmp_path)), seed=0)


def test_split_that_empties_a_class_is_an_error():
    from dltrain.data import stratified_split

    labels = torch.tensor([0] * 50 + [1])
    with pytest.raises(DltrainError, match="leaves no training samples of class"):
        stratified_split(labels, 0.5, seed=0)


# 13 ----------------------------------------------------------------------------------------
def test_cuda_out_of_memory_suggests_smaller_batch(tmp_path):
    def progress(event):
        at_5 = isinstance(event, BatchEnd) and event.step == 5
        if at_5 and (tmp_path / "best.pt").exists():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(DltrainError) as caught:
        fit(_small(), tmp_path, [progress])
    message = str(caught.value)
    assert "ran out of memory in epoch 2 with data.batch_size=64" in message
    assert "--set data.batch_size=32" in message
    assert checkpoint.load(tmp_path / "last.pt")["epoch"] == 1
