"""Finetune: frozen weights stay bit-identical, the head is new, gradual unfreezing works."""

import json

import pytest
import torch

from dltrain.config import validate
from dltrain.reporting.events import EpochEnd
from dltrain.training.engine import fit
from dltrain.training.finetune import from_source

FAKE = {
    "dataset": "fake",
    "batch_size": 16,
    "fake": {"train_size": 48, "test_size": 8, "classes": 10, "channels": 3, "image_size": 32},
}
MODELS = {
    "mlp": {"name": "mlp", "hidden": [32], "batch_norm": True},
    "cnn": {"name": "cnn", "channels": [8, 16], "batch_norm": True},
    "alexnet": {"name": "alexnet"},
    "resnet18": {"name": "resnet18", "small_input": True},
}


def _config(model: dict, classes: int, **train) -> dict:
    data = json.loads(json.dumps(FAKE))
    data["fake"]["classes"] = classes
    return {
        "name": "ft",
        "device": "cpu",
        "data": data,
        "model": model,
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1, **train},
        "checkpoint": {"interval": 0},  # tests read last.pt after each epoch
    }


@pytest.fixture
def source(tmp_path):
    def train(model: dict) -> torch.Tensor:
        cfg = _config(model, classes=10) | {"checkpoint": {"save_last": False}}
        fit(validate(cfg), tmp_path / "source")
        return tmp_path / "source" / "best.pt"

    return train


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_frozen_backbone_is_bit_identical_and_head_is_new(tmp_path, source, name):
    src_path = source(MODELS[name])
    src = torch.load(src_path, weights_only=True)["model"]
    cfg = _config({"name": "mlp"}, classes=4, epochs=2) | {"checkpoint": {"save_best": False}}
    cfg, parent = from_source(validate(cfg), str(src_path))
    assert cfg.model.name == name
    summary = fit(cfg, tmp_path / "ft", parent=parent)
    tuned = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    head = {"mlp": "head", "cnn": "head", "alexnet": "classifier.6", "resnet18": "fc"}[name]
    for key, value in tuned["model"].items():
        if key.startswith(head + "."):
            assert value.shape[0] == 4, key
        else:  # frozen weights and frozen BatchNorm statistics are untouched
            assert torch.equal(value, src[key]), key
    assert tuned["model"][f"{head}.weight"].shape[0] == 4
    assert summary.parent["checkpoint"] == str(src_path)
    assert summary.parent["classes"] == 10
    assert summary.trainable_params == tuned["model"][f"{head}.weight"].numel() + 4


def test_unfreeze_at_epoch_trains_everything_from_then_on(tmp_path, source):
    src_path = source(MODELS["mlp"])
    src = torch.load(src_path, weights_only=True)["model"]
    finetune = {"finetune": {"unfreeze_at_epoch": 2, "head_lr_mult": 5}}
    cfg = validate(_config({"name": "mlp"}, classes=4, epochs=2) | finetune)
    cfg, parent = from_source(cfg, str(src_path))
    after_epoch = {}

    def capture(event):
        if isinstance(event, EpochEnd):
            payload = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
            after_epoch[event.row["epoch"]] = payload["model"]

    fit(cfg, tmp_path / "ft", [capture], parent=parent)
    key = "features.1.weight"
    assert torch.equal(after_epoch[1][key], src[key])
    assert not torch.equal(after_epoch[2][key], src[key])


def test_finetune_cli_records_parent_and_resumes_frozen(cli, tmp_path, source, write_config):
    src_path = source(MODELS["cnn"])
    config = write_config(json.dumps(_config({"name": "cnn"}, classes=3, epochs=2)))
    result = cli("finetune", config, "--from", src_path, "--run-dir", tmp_path / "ft")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["parent"]["source"] == "checkpoint"
    assert len(summary["parent"]["sha256"]) == 64
    # Evaluating the finetuned checkpoint rebuilds it without the source file.
    src_path.rename(tmp_path / "moved.pt")
    result = cli("eval", "--ckpt", tmp_path / "ft" / "best.pt", "--json")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"finetune": {"freeze": ["features.9", "bogus"]}}, "finetune.freeze: 'features.9'"),
    ],
)
def test_bad_freeze_prefix_is_one_line(cli, tmp_path, source, write_config, changes, message):
    src_path = source(MODELS["mlp"])
    config = write_config(json.dumps(_config({"name": "mlp"}, classes=3) | changes))
    result = cli("finetune", config, "--from", src_path, "--run-dir", tmp_path / "ft")
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_finetune_from_imagenet_needs_a_torchvision_model(cli, write_config):
    config = write_config(json.dumps(_config({"name": "cnn"}, classes=3)))
    result = cli("finetune", config, "--from", "imagenet")
    assert result.exit_code == 1
    assert "finetune --from imagenet: cnn has no ImageNet weights" in result.stderr


def test_finetune_from_imagenet_freezes_the_backbone(cli, tmp_path, monkeypatch, write_config):
    """torchvision's real weights API, reading a state dict planted in its cache."""
    import torchvision
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    planted = torchvision.models.resnet18().state_dict()
    torch.save(planted, cache / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1])
    model = {"name": "resnet18", "small_input": False}
    config = write_config(json.dumps(_config(model, classes=3)))
    result = cli("finetune", config, "--from", "imagenet", "--run-dir", tmp_path / "ft")
    assert result.exit_code == 0, result.output
    tuned = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    assert torch.equal(tuned["layer4.1.conv2.weight"], planted["layer4.1.conv2.weight"])
    assert torch.equal(tuned["bn1.running_mean"], planted["bn1.running_mean"])
    assert tuned["fc.weight"].shape == (3, 512)
