"""The shipped strong recipes (configs/*_strong.yaml) train through the real CLI on files
written in their dataset's real format, and keep what they add over the course's configs."""

import json
from pathlib import Path

import pytest
import torchvision
import yaml

from tests.formats import digits_as_mnist, write_cifar, write_idx

STRONG = sorted(Path("configs").glob("*_strong.yaml"))


def test_there_is_a_strong_recipe_per_dataset_family():
    assert {p.stem for p in STRONG} == {
        "mnist_cnn_strong",
        "fashion_mnist_cnn_strong",
        "cifar_resnet18_strong",
    }


@pytest.mark.parametrize("config", STRONG, ids=[p.stem for p in STRONG])
def test_strong_recipe_trains_on_files_of_its_format(cli, tmp_path, monkeypatch, config):
    recipe = yaml.safe_load(config.read_text())
    dataset = recipe["data"]["dataset"]
    if dataset == "cifar10":
        write_cifar(tmp_path / "data", 10, n_train=96, n_test=32)
        # The md5 of the official archives: self-written files cannot match it.
        monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    else:
        folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[dataset]
        write_idx(tmp_path / "data", folder, *digits_as_mnist(160, 40))
    small = ["data.val_split=32", "data.batch_size=32", "train.epochs=2", "data.download=false"]
    sets = [a for item in [*small, f"data.root={tmp_path / 'data'}"] for a in ("--set", item)]
    result = cli("train", config, *sets, "--device", "cpu", "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 2
    assert summary["ema_decay"] == recipe["train"]["ema"]["decay"]
    ran = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert ran["train"]["label_smoothing"] == 0.1
    assert ran["schedule"]["name"] == recipe["schedule"]["name"] != "none"
    assert ran["data"]["augment"] == {**ran["data"]["augment"], **recipe["data"]["augment"]}
    assert (tmp_path / "run" / "best.pt").is_file()
