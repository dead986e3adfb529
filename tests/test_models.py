"""Every registered model: shapes, gradients, parameter counts, heads and weight loading."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models import AlexNet_Weights, ResNet18_Weights

from dltrain.config import ModelConfig
from dltrain.data import DataInfo
from dltrain.errors import DltrainError
from dltrain.models import MODELS, build_model, count_parameters, needs_rgb, replace_head

# The input shapes (channels, height, width) each model claims to handle.
SHAPES = {
    "mlp": [(1, 28, 28), (3, 32, 32), (1, 8, 8)],
    "cnn": [(1, 28, 28), (3, 32, 32), (1, 8, 8)],
    "alexnet": [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 224, 224)],
    "resnet18": [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 224, 224)],
}
# Non-default settings that change the layers built.
VARIANTS = [
    ("mlp", (1, 28, 28), {"hidden": [32, 16], "batch_norm": True, "dropout": 0.5}),
    ("cnn", (3, 32, 32), {"batch_norm": True, "dropout": 0.5}),
    ("cnn", (1, 8, 8), {"channels": [4, 4, 4, 4, 4]}),  # more blocks than 8 px can halve
    ("cnn", (3, 9, 13), {"channels": [8, 8]}),  # odd, not square
    ("alexnet", (3, 32, 32), {"dropout": 0.5}),
    ("alexnet", (3, 15, 15), {}),  # the smallest input the small stem takes
    ("resnet18", (3, 32, 32), {"small_input": False}),
]
CASES = [(name, shape, {}) for name in MODELS.names() for shape in SHAPES.get(name, [])]
CASES += VARIANTS
HEADS = {"mlp": "head", "cnn": "head", "alexnet": "classifier.6", "resnet18": "fc"}
WEIGHTS = {"alexnet": AlexNet_Weights.IMAGENET1K_V1, "resnet18": ResNet18_Weights.IMAGENET1K_V1}


def make_info(channels: int = 3, size: tuple[int, int] = (32, 32), classes: int = 10) -> DataInfo:
    return DataInfo(
        name="test",
        class_names=[f"class{i}" for i in range(classes)],
        channels=channels,
        image_size=size,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )


def case_id(case: tuple) -> str:
    name, shape, overrides = case
    return "-".join([name, "x".join(map(str, shape)), *overrides])


def test_every_model_claims_its_input_shapes():
    assert sorted(SHAPES) == MODELS.names()
    assert sorted(HEADS) == MODELS.names()


@pytest.mark.parametrize(("name", "shape", "overrides"), CASES, ids=map(case_id, CASES))
def test_forward_and_backward(name: str, shape: tuple[int, int, int], overrides: dict):
    torch.manual_seed(0)
    channels, height, width = shape
    model = build_model(
        make_info(channels, (height, width), 7), ModelConfig(name=name, **overrides)
    )
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 6])).backward()
    no_grad = [key for key, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_torchvision_models_match_torchvision_at_imagenet_shape(name: str):
    model = build_model(make_info(3, (224, 224), 1000), ModelConfig(name=name))
    reference = getattr(torchvision.models, name)()
    assert count_parameters(model) == sum(p.numel() for p in reference.parameters())
    ours = {key: value.shape for key, value in model.state_dict().items()}
    assert ours == {key: value.shape for key, value in reference.state_dict().items()}


def test_alexnet_small_stem_changes_only_the_first_conv():
    model = build_model(make_info(3, (32, 32), 1000), ModelConfig(name="alexnet"))
    stock = sum(p.numel() for p in torchvision.models.alexnet().parameters())
    assert count_parameters(model) == stock - 64 * 3 * 11 * 11 + 64 * 3 * 3 * 3


def test_cnn_parameter_count_by_hand():
    model = build_model(make_info(3, (32, 32), 10), ModelConfig(name="cnn"))
    convs = (3 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * 9 * 128 + 128)
    head = 128 * 4 * 4 * 10 + 10  # 32 -> 16 -> 8 -> 4 px
    assert count_parameters(model) == convs + head == 113_738


def test_mlp_parameter_count_by_hand():
    model = build_model(make_info(1, (28, 28), 10), ModelConfig(name="mlp"))
    assert count_parameters(model) == (784 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)


@pytest.mark.parametrize(
    ("name", "size", "small_input", "stem_kernel"),
    [
        ("alexnet", 32, "auto", (3, 3)),
        ("alexnet", 64, "auto", (11, 11)),
        ("alexnet", 64, True, (3, 3)),
        ("resnet18", 63, "auto", (3, 3)),
        ("resnet18", 64, "auto", (7, 7)),
        ("resnet18", 32, False, (7, 7)),
    ],
)
def test_small_input_picks_the_stem(name: str, size: int, small_input, stem_kernel: tuple):
    model = build_model(make_info(1, (size, size)), ModelConfig(name=name, small_input=small_input))
    stem = model.features[0] if name == "alexnet" else model.conv1
    assert stem.kernel_size == stem_kernel
    assert stem.in_channels == 1
    if name == "resnet18":
        assert isinstance(model.maxpool, nn.Identity) == (stem_kernel == (3, 3))


@pytest.mark.parametrize(
    ("size", "small_input", "needed"), [(32, False, "63x63"), (14, "auto", "15x15")]
)
def test_alexnet_refuses_images_it_would_shrink_to_nothing(size: int, small_input, needed: str):
    cfg = ModelConfig(name="alexnet", small_input=small_input)
    with pytest.raises(DltrainError, match=f"at least {needed} px, the data has {size}x{size}"):
        build_model(make_info(3, (size, size)), cfg)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_replace_head_keeps_in_features(name: str):
    model = build_model(make_info(3, (32, 32), 10), ModelConfig(name=name))
    assert model.head_name == HEADS[name]
    old = model.get_submodule(model.head_name)
    assert isinstance(old, nn.Linear) and old.out_features == 10
    replace_head(model, 4)
    new = model.get_submodule(model.head_name)
    assert new is not old
    assert (new.in_features, new.out_features) == (old.in_features, 4)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize(
    ("pretrained", "rgb"), [("none", False), ("imagenet", True), ("w.pt", False)]
)
def test_needs_rgb(pretrained: str, rgb: bool):
    assert needs_rgb(ModelConfig(name="resnet18", pretrained=pretrained)) is rgb


# --- ImageNet weights, through an offline torch.hub cache ---------------------------------


def cached_name(name: str) -> str:
    return os.path.basename(urlparse(WEIGHTS[name].url).path)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch.hub checkpoint folder under TORCH_HOME=tmp_path; downloads fail."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = torch.hub.get_dir()
    assert hub == str(tmp_path / "torch" / "hub"), "torch.hub.set_dir() overrides TORCH_HOME"

    def offline(url: str, *args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return Path(hub) / "checkpoints"


# AlexNet's file is ~240 MB; planting and loading it takes about 2 s on 2 CPU cores.
@pytest.mark.parametrize(
    ("name", "backbone_key"),
    [("resnet18", "layer4.1.conv2.weight"), ("alexnet", "features.10.weight")],
)
@pytest.mark.parametrize("small_input", [False, True])
def test_imagenet_weights_from_the_cache(hub_cache, name, backbone_key, small_input):
    planted = getattr(torchvision.models, name)().state_dict()
    hub_cache.mkdir(parents=True)
    torch.save(planted, hub_cache / cached_name(name))
    cfg = ModelConfig(name=name, pretrained="imagenet", small_input=small_input)
    model = build_model(make_info(3, (64, 64), 10), cfg)
    state = model.state_dict()
    assert torch.equal(state[backbone_key], planted[backbone_key])
    assert model.get_submodule(model.head_name).out_features == 10
    stem_key = "features.0.weight" if name == "alexnet" else "conv1.weight"
    # the small stem is a new 3x3 conv, freshly initialised after loading
    assert torch.equal(state[stem_key], planted[stem_key]) != small_input
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_imagenet_weights_not_cached_and_offline(hub_cache, name: str):
    with pytest.raises(DltrainError) as error:
        build_model(make_info(3, (32, 32)), ModelConfig(name=name, pretrained="imagenet"))
    message = str(error.value)
    assert cached_name(name) in message
    assert str(hub_cache) in message
    assert WEIGHTS[name].url in message
    assert "\n" not in message


def test_imagenet_cached_file_damaged(hub_cache):
    hub_cache.mkdir(parents=True)
    (hub_cache / cached_name("resnet18")).write_bytes(b"half a download")
    with pytest.raises(DltrainError, match="delete the file") as error:
        build_model(make_info(), ModelConfig(name="resnet18", pretrained="imagenet"))
    assert str(hub_cache / cached_name("resnet18")) in str(error.value)


@pytest.mark.parametrize(
    ("name", "channels", "match"),
    [("resnet18", 1, "need 3-channel images"), ("cnn", 3, "cnn has no ImageNet weights")],
)
def test_imagenet_weights_refused(hub_cache, name: str, channels: int, match: str):
    with pytest.raises(DltrainError, match=match):
        build_model(make_info(channels), ModelConfig(name=name, pretrained="imagenet"))


# --- weights from a file -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18"])  # alexnet: same code, 240 MB file
@pytest.mark.parametrize("layout", ["state_dict", "dltrain_checkpoint"])
def test_pretrained_file_keeps_backbone_and_fresh_head(tmp_path: Path, name: str, layout: str):
    trained = build_model(make_info(classes=5), ModelConfig(name=name)).state_dict()
    path = tmp_path / "weights.pt"
    if layout == "state_dict":
        torch.save(trained, path)
    else:
        torch.save({"model": trained, "epoch": 3, "config": {"name": "run"}}, path)
    torch.manual_seed(1)
    fresh = build_model(make_info(classes=10), ModelConfig(name=name)).state_dict()
    torch.manual_seed(1)
    model = build_model(make_info(classes=10), ModelConfig(name=name, pretrained=str(path)))
    head = HEADS[name] + "."
    for key, value in model.state_dict().items():
        expected = fresh[key] if key.startswith(head) else trained[key]
        assert torch.equal(value, expected), key


def test_pretrained_file_with_same_classes_loads_the_head(tmp_path: Path):
    trained = build_model(make_info(), ModelConfig(name="cnn")).state_dict()
    torch.save(trained, tmp_path / "weights.pt")
    model = build_model(
        make_info(), ModelConfig(name="cnn", pretrained=str(tmp_path / "weights.pt"))
    )
    assert torch.equal(model.head.weight, trained["head.weight"])


def _touch(path: str) -> None:
    Path(path).touch()


class Payload:
    """Unpickling this runs `_touch(marker)`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_pretrained_file_with_code_is_refused(tmp_path: Path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    trained = build_model(make_info(), ModelConfig(name="mlp")).state_dict()
    torch.save({"model": trained, "extra": Payload(marker)}, path)
    with pytest.raises(DltrainError, match="Python objects beyond tensors") as error:
        build_model(make_info(), ModelConfig(name="mlp", pretrained=str(path)))
    assert str(path) in str(error.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proof that the payload is live
    assert marker.exists()


def _garbage(path: Path) -> None:
    path.write_bytes(b"these are not weights")


def _truncated(path: Path) -> None:
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:200])


def _not_a_state_dict(path: Path) -> None:
    torch.save({"optimizer": {"lr": 0.1}}, path)


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (None, "no such file"),
        (_garbage, "cannot load"),
        (_truncated, "cannot load"),
        (_not_a_state_dict, "does not hold a state dict"),
    ],
    ids=["missing", "garbage", "truncated", "not_a_state_dict"],
)
def test_pretrained_file_unusable(tmp_path: Path, write, match: str):
    path = tmp_path / "weights.pt"
    if write:
        write(path)
    with pytest.raises(DltrainError, match=match) as error:
        build_model(make_info(), ModelConfig(name="cnn", pretrained=str(path)))
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_pretrained_file_for_another_model(tmp_path: Path):
    torch.save(build_model(make_info(), ModelConfig(name="cnn")).state_dict(), tmp_path / "w.pt")
    cfg = ModelConfig(name="resnet18", pretrained=str(tmp_path / "w.pt"))
    with pytest.raises(DltrainError, match="does not fit this ResNet model") as error:
        build_model(make_info(), cfg)
    message = str(error.value)
    assert message.count("missing") + message.count("unexpected") == 3
    assert "more" in message and "\n" not in message


def test_pretrained_file_with_a_misshaped_backbone(tmp_path: Path):
    trained = build_model(make_info(channels=1), ModelConfig(name="cnn")).state_dict()
    torch.save(trained, tmp_path / "w.pt")
    cfg = ModelConfig(name="cnn", pretrained=str(tmp_path / "w.pt"))
    with pytest.raises(DltrainError, match=r"features.0.weight is \(32, 1, 3, 3\)"):
        build_model(make_info(channels=3), cfg)
