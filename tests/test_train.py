"""A real training run through the CLI on the embedded digits, and eval of its checkpoints."""

import csv
import json
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Train the small digits config for 2 epochs once; tests read the run folder."""
    from typer.testing import CliRunner

    from dltrain.cli import app
    from tests.conftest import DIGITS_SMALL

    root = tmp_path_factory.mktemp("run")
    config = root / "config.yaml"
    config.write_text(DIGITS_SMALL)
    result = CliRunner().invoke(app, ["train", str(config), "--run-dir", str(root / "out")])
    assert result.exit_code == 0, result.output
    return root / "out", result


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_run_folder_has_every_file(digits_run):
    run_dir, result = digits_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "metrics.csv", "summary.json", "last.pt", "best.pt"} <= names
    assert not [n for n in names if "tmp" in n]
    rows = _metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    # One plain line per epoch when output is not a terminal, and a summary table.
    assert result.stdout.count("epoch 1/2") == 1 and result.stdout.count("epoch 2/2") == 1
    assert "summary" in result.stdout


def test_two_epochs_on_digits_learn(digits_run):
    run_dir, _ = digits_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 2
    assert summary["best_metrics"]["val_acc"] >= 0.9
    assert summary["sizes"] == {"train": 1150, "val": 288, "test": 359}
    best = max(_metrics(run_dir), key=lambda r: float(r["val_acc"]))
    assert summary["best_epoch"] == int(best["epoch"])


def test_checkpoint_is_self_contained_and_weights_only(digits_run):
    run_dir, _ = digits_run
    payload = torch.load(run_dir / "best.pt", weights_only=True)
    assert payload["class_names"] == [str(i) for i in range(10)]
    assert payload["config"]["model"]["hidden"] == [64]
    assert payload["data_info"]["mean"] == [0.3053]
    assert all(isinstance(v, torch.Tensor) for v in payload["model"].values())


def test_eval_best_reproduces_recorded_val_metrics(cli, digits_run):
    run_dir, _ = digits_run
    summary = json.loads((run_dir / "summary.json").read_text())
    result = cli("eval", "--ckpt", run_dir / "best.pt", "--split", "val", "--json")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    recorded = _metrics(run_dir)[summary["best_epoch"] - 1]
    assert measured["acc"] == float(recorded["val_acc"])
    assert measured["loss"] == pytest.approx(float(recorded["val_loss"]), rel=1e-9)
    assert measured["samples"] == 288


def test_eval_test_split_prints_accuracy(cli, digits_run):
    run_dir, _ = digits_run
    result = cli("eval", "--ckpt", run_dir / "best.pt", "--split", "test")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("test: accuracy 0.")
    assert "359 samples" in result.stdout


def test_eval_of_missing_or_foreign_checkpoint_is_one_line(cli, tmp_path):
    result = cli("eval", "--ckpt", tmp_path / "nope.pt")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: checkpoint not found: {tmp_path / 'nope.pt'}"
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(2)}, bare)
    result = cli("eval", "--ckpt", bare)
    assert result.exit_code == 1 and "not a dltrain checkpoint" in result.stderr
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    result = cli("eval", "--ckpt", garbage)
    assert result.exit_code == 1 and "damaged" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_existing_run_dir_is_not_overwritten(cli, digits_run, digits_config):
    run_dir, _ = digits_run
    before = (run_dir / "metrics.csv").read_bytes()
    result = cli("train", digits_config, "--run-dir", run_dir)
    assert result.exit_code == 1 and "already holds a run" in result.stderr
    assert (run_dir / "metrics.csv").read_bytes() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_is_one_line(cli, digits_config, tmp_path):
    result = cli("train", digits_config, "--device", "cuda", "--run-dir", tmp_path / "r")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: device 'cuda' was asked for but CUDA is not available on this machine; "
        "use --device cpu or device: auto"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["config", "show", "configs/digits_mlp.yaml"],
        ["config", "show", "configs/digits_cnn.yaml", "--set", "model.name=efficientnet_b0"],
        ["config", "show", "configs/digits_cnn.yaml", "--set", "model.name=timm/resnet18"],
        ["models", "*convnext*"],
    ],
)
def test_cli_start_up_does_not_import_torch(args):
    code = (
        "import sys\n"
        "from dltrain.cli import main\n"
        f"sys.argv = ['dltrain', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_python_m_dltrain_version():
    out = subprocess.run(
        [sys.executable, "-m", "dltrain", "--version"], capture_output=True, text=True, check=True
    )
    from dltrain import __version__

    assert out.stdout.strip() == f"dltrain {__version__}"
