"""The CUDA path, end to end: only where a CUDA device is present (skipped elsewhere, so CI
on CPU machines skips this file; it was run on an H200 through the device tool).

Checks what the CPU tests cannot: bf16 autocast, data resident on the GPU with batch-wise
augmentation there and no host sync per step, channels_last + torch.compile (opt-in), NCCL
under torchrun, and that a checkpoint written on the GPU evaluates on the CPU.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from dltrain.config import validate
from dltrain.data import build_splits, make_loader
from dltrain.models import build_model
from dltrain.training.checkpoint import load
from dltrain.training.epoch import train_one_epoch
from dltrain.training.runtime import Precision
from tests.formats import write_cifar, write_pngs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

REPO = Path(__file__).resolve().parents[1]

DIGITS = """\
name: gpu_digits
seed: 0
device: cuda
data: {dataset: digits, batch_size: 32}
model: {name: mlp, hidden: [128], dropout: 0.1}
optim: {name: adam, lr: 3e-3}
train: {epochs: 4}
"""


def cifar_config(root: Path, epochs: int = 1) -> str:
    return f"""\
name: gpu_cnn
seed: 0
device: cuda
data:
  dataset: cifar10
  root: {root}
  download: false
  val_split: 0.2
  batch_size: 64
  augment: {{random_crop: 4, hflip: true}}
model: {{name: cnn, channels: [16, 32], dropout: 0.1}}
optim: {{name: adam, lr: 1e-3}}
train: {{epochs: {epochs}, compile: true}}
"""


@pytest.fixture
def cifar_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cifar"
    write_cifar(root, classes=10, n_train=1280, n_test=64)
    # Self-written files cannot match the md5 of the official archives; the reading runs.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    return root


def summary(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_digits_bf16_on_cuda_then_eval_on_cpu(cli, write_config, tmp_path):
    run = tmp_path / "run"
    got = summary(cli("train", write_config(DIGITS), "--run-dir", run, "--json"))
    assert got["device"].startswith("cuda")
    assert got["best_value"] > 0.9
    # The checkpoint holds plain CPU-loadable fp32 weights of the unwrapped model.
    payload = load(run / "best.pt")
    assert all(not k.startswith(("_orig_mod.", "module.")) for k in payload["model"])
    assert {t.dtype for t in payload["model"].values() if t.is_floating_point()} == {torch.float32}
    result = cli("eval", "--ckpt", run / "best.pt", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    cpu = json.loads(result.stdout)
    # bf16 autocast on the GPU against fp32 on the CPU: the same images, nearly the same calls.
    assert abs(cpu["acc"] - got["best_value"]) <= 0.02, (cpu, got)


def test_in_memory_splits_live_on_the_gpu_and_augment_there(cifar_root):
    cfg = validate(
        {
            "data": {
                "dataset": "cifar10",
                "root": str(cifar_root),
                "download": False,
                "augment": {"random_crop": 4, "hflip": True},
            },
            "model": {"name": "cnn"},
        }
    )
    device = torch.device("cuda")
    splits = build_splits(cfg.data, 0, rgb=True)
    train = make_loader(splits, "train", cfg.data, device, seed=0)
    val = make_loader(splits, "val", cfg.data, device)
    images, labels = next(iter(train))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32
    assert images.shape[1:] == (3, 32, 32)
    # Validation batches are larger (no gradients are kept) and not augmented: two passes agree.
    v1, _ = next(iter(val))
    v2, _ = next(iter(val))
    assert v1.is_cuda and len(v1) == 2 * len(images) and torch.equal(v1, v2)
    # Augmentation differs between two epochs' draws of the same images.
    assert not torch.equal(next(iter(train))[0], images)


def test_training_steps_do_not_wait_for_the_gpu(cifar_root):
    """No host sync per step: CUDA's sync debug mode warns at every synchronizing call (an
    `.item()`, a plain CPU-to-GPU copy); over an epoch of augmented batches we allow the
    tally's one check per 16 steps and a few per epoch, far below one per step."""
    augment = {"random_crop": 4, "hflip": True, "rotation": 10, "color_jitter": 0.2}
    augment["random_resized_crop"] = 0.5
    cfg = validate(
        {
            "data": {
                "dataset": "cifar10",
                "root": str(cifar_root),
                "download": False,
                "batch_size": 16,
                "augment": augment,
            },
            "model": {"name": "cnn", "channels": [16, 32]},
        }
    )
    device = torch.device("cuda")
    splits = build_splits(cfg.data, 0, rgb=True)
    batches = make_loader(splits, "train", cfg.data, device, seed=0)
    model = build_model(splits.info, cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    bf16 = Precision(lambda: torch.autocast("cuda", torch.bfloat16), scaler)
    args = (model, batches, optimizer, torch.nn.CrossEntropyLoss(), cfg.train)
    train_one_epoch(*args, precision=bf16)  # warm-up: cuDNN autotuning and allocator growth
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = train_one_epoch(*args, precision=bf16)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
    steps = len(batches)
    print(f"{steps} steps, {len(syncs)} host syncs at {sites}")
    assert steps >= 64 and 0.0 < result["acc"] <= 1.0
    # The mechanism works (the folds do sync) and the count is per window, not per step.
    assert 1 <= len(syncs) <= -(-steps // 16) + 4, sites


def test_cnn_compiled_channels_last_on_cuda(cli, write_config, tmp_path, cifar_root):
    run = tmp_path / "run"
    got = summary(
        cli("train", write_config(cifar_config(cifar_root, epochs=2)), "--run-dir", run, "--json")
    )
    assert got["device"].startswith("cuda") and got["epochs_run"] == 2
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3
    payload = load(run / "last.pt")
    assert all(not k.startswith("_orig_mod.") for k in payload["model"])
    assert payload["rng"]["cuda"], "the CUDA generator state is saved for resume"
    result = cli("eval", "--ckpt", run / "best.pt", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.stdout)["acc"] <= 1.0


def test_resume_on_cuda_continues_the_run(cli, write_config, tmp_path):
    config = write_config(DIGITS.replace("epochs: 4", "epochs: 2"))
    run = tmp_path / "run"
    summary(cli("train", config, "--run-dir", run, "--json"))
    # A longer schedule resumed from last.pt: epochs 3-4 only, on the GPU again.
    got = summary(cli("train", "--resume", run, "--set", "train.epochs=4", "--json"))
    assert got["epochs_run"] == 4
    assert len((run / "metrics.csv").read_text().splitlines()) == 5


def test_image_folder_pinned_memory_on_cuda(cli, write_config, tmp_path):
    folder = tmp_path / "images"
    write_pngs(folder, {"cat": 24, "dog": 24}, size=(16, 16))
    config = write_config(
        f"""\
        name: gpu_folder
        seed: 0
        device: cuda
        data: {{dataset: imagefolder, root: {folder}, resize: 16, batch_size: 8, num_workers: 2}}
        model: {{name: cnn, channels: [8]}}
        optim: {{name: adam, lr: 1e-3}}
        train: {{epochs: 1}}
        """
    )
    got = summary(cli("train", config, "--run-dir", tmp_path / "run", "--json"))
    assert got["device"].startswith("cuda") and got["epochs_run"] == 1


def test_nccl_under_torchrun_one_process(write_config, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "dltrain", "train", write_config(DIGITS), "--nproc", "1"]
        + ["--run-dir", str(run), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["device"].startswith("cuda") and got["best_value"] > 0.9
    assert load(run / "last.pt")["world_size"] == 1
