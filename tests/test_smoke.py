"""Every smoke config trains through the real CLI; a CNN learns from MNIST-format files."""

import json
from pathlib import Path

import pytest

from tests.formats import digits_as_mnist, write_idx

SMOKE = sorted(Path("configs/smoke").glob("*.yaml"))


def test_there_is_a_smoke_config_per_model():
    from dltrain.models import MODELS

    assert {p.stem for p in SMOKE} >= set(MODELS.names())


@pytest.mark.parametrize("config", SMOKE, ids=[p.stem for p in SMOKE])
def test_smoke_config_trains_through_cli(cli, tmp_path, config):
    result = cli("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["status"] == "finished"
    # eval rebuilds the model (channels_last and precision too) and measures the same numbers
    result = cli("eval", "--ckpt", tmp_path / "run" / "best.pt", "--json")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["acc"] == summary["best_metrics"]["val_acc"]
    assert measured["loss"] == pytest.approx(summary["best_metrics"]["val_loss"], rel=1e-6)


def test_every_shipped_config_is_valid(cli):
    for config in sorted(Path("configs").rglob("*.yaml")):
        result = cli("config", "show", config)
        assert result.exit_code == 0, f"{config}: {result.output}"


@pytest.mark.slow
def test_cnn_learns_from_mnist_format_files(cli, tmp_path, write_config):
    """Real handwritten digits written as MNIST IDX files, read by torchvision's MNIST class."""
    train, test = digits_as_mnist(1400, 397)
    write_idx(tmp_path / "data", "MNIST", train, test)
    config = write_config(f"""\
        name: mnist_files
        device: cpu
        data: {{dataset: mnist, root: {tmp_path / "data"}, download: false, val_split: 300,
               batch_size: 32}}
        model: {{name: cnn, channels: [16, 32, 64]}}
        optim: {{name: adam, lr: 2e-3}}
        train: {{epochs: 3}}
        """)
    result = cli("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sizes"] == {"train": 1100, "val": 300, "test": 397}
    assert summary["best_metrics"]["val_acc"] >= 0.85  # chance is 0.1
    result = cli("eval", "--ckpt", tmp_path / "run" / "best.pt", "--split", "test", "--json")
    assert json.loads(result.stdout)["acc"] >= 0.8
