"""torchvision's and timm's classifiers by name: the facts table is current, a representative
set builds, trains a step, evaluates and exports with parity at a small size, pretrained
weights load from the libraries' caches (planted here: no network), and bad names, sizes and
a missing timm are one line."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from dltrain.config import DataConfig, ModelConfig, validate
from dltrain.data import DataInfo, data_info, for_model
from dltrain.errors import DltrainError
from dltrain.models import build_model, catalog, facts, model_input

needs_timm = pytest.mark.skipif(
    find_spec("timm") is None, reason="needs pip install 'dltrain[timm]'"
)
needs_onnx = pytest.mark.skipif(
    any(find_spec(name) is None for name in ("onnx", "onnxruntime", "onnxscript")),
    reason="needs pip install 'dltrain[export]'",
)
TIMM = [pytest.param("timm/resnet18", marks=needs_timm),
        pytest.param("timm/mobilenetv3_small_050", marks=needs_timm)]  # fmt: skip
REPRESENTATIVE = ["mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", *TIMM]


def make_info(channels: int = 3, size: int = 32, classes: int = 5) -> DataInfo:
    return DataInfo("t", [f"c{i}" for i in range(classes)], channels, (size, size),
                    [0.5] * channels, [0.25] * channels)  # fmt: skip


# --- the facts table ------------------------------------------------------------------------


def test_zoo_file_is_current():
    """zoo.json against the installed libraries: every name, and every field read from their
    metadata. To regenerate, see dltrain/models/catalog.py."""
    pytest.importorskip("timm")
    table = facts.table()
    assert table["versions"] == catalog.versions(), "regenerate zoo.json (see catalog.py)"
    names = catalog.torchvision_names() + catalog.timm_names()
    assert list(table["models"]) == names
    for name in names:
        row, stored = catalog.row(name, measure=False), dict(table["models"][name])
        stored["stats"] = list(facts.stats(stored))
        for key in catalog.MEASURED[row["source"]]:
            row.pop(key, None), stored.pop(key, None)
        assert stored == row, name


@pytest.mark.parametrize(
    "name", ["mobilenet_v3_small", "vit_b_16", "regnet_y_400mf", "squeezenet1_1", *TIMM]
)
def test_measured_facts_match_the_models(name: str):
    stored = dict(facts.lookup(name))
    stored["stats"] = list(facts.stats(stored))
    assert catalog.row(name) == stored


def test_a_name_the_file_lacks_is_looked_up_in_another_library_version(monkeypatch):
    table = facts.table()
    models = {name: row for name, row in table["models"].items() if name != "resnet50"}
    monkeypatch.setitem(table, "models", models)
    assert facts.lookup("resnet50") is None  # the same torchvision: the file is the truth
    monkeypatch.setitem(table, "versions", {**table["versions"], "torchvision": "0.1"})
    assert facts.lookup("resnet50")["weights"] == "IMAGENET1K_V2"  # a newer one may have more
    assert facts.lookup("resnet51") is None


def test_course_models_keep_their_own_rows():
    assert facts.source("resnet18") == "course" and facts.source("alexnet") == "course"
    assert "resnet18" not in facts.table()["models"]
    assert facts.names()[:4] == ["mlp", "cnn", "alexnet", "resnet18"]
    from dltrain.models.names import COURSE_NAMES  # what the catalog leaves out of zoo.json

    assert tuple(facts.COURSE) == COURSE_NAMES


# --- config checks, no torch needed -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data", "line"),
    [
        ({"name": "mobilenet_v3_smal"}, {}, "did you mean mobilenet_v3_small?"),
        ({"name": "timm/resnt18"}, {}, "did you mean timm/resnet18?"),
        ({"name": "vit_b_16"}, {"dataset": "cifar10"},
         "model.name: vit_b_16 needs 224x224 inputs, the data has 32x32; set data.resize: 224"),
        ({"name": "mobilenet_v3_small", "small_input": True}, {},
         "model.small_input: only alexnet and resnet18 have a small-input stem"),
        ({"name": "mlp", "pretrained": "imagenet"}, {}, "model.pretrained: mlp has no ImageNet"),
    ],
)  # fmt: skip
def test_config_refuses_in_one_line(model: dict, data: dict, line: str):
    from dltrain.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        validate({"model": model, "data": data})
    assert line in str(error.value) and len(error.value.lines) == 1


def test_typo_exits_2_with_did_you_mean(cli):
    result = cli("train", "configs/digits_cnn.yaml", "--set", "model.name=mobilenet_v3_smal")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: configs/digits_cnn.yaml: model.name: 'mobilenet_v3_smal' is not one of the "
        f"{len(facts.names()):,} models dltrain knows; did you mean mobilenet_v3_small? "
        "(dltrain models lists them) (from --set)"
    )


def test_weights_preprocessing_becomes_the_data_default():
    wants = model_input(ModelConfig(name="efficientnet_b1", pretrained="imagenet"))
    assert wants == (True, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 240)
    info = data_info(for_model(DataConfig(dataset="digits"), wants), rgb=wants.rgb)
    assert (info.channels, info.image_size, info.mean) == (3, (240, 240), wants.mean)
    own = DataConfig(dataset="digits", resize=32, normalize="dataset")
    info = data_info(for_model(own, wants), rgb=wants.rgb)
    assert info.image_size == (32, 32) and info.mean != wants.mean  # the config's own win
    # without weights: the data's own size and statistics, gray repeated for torchvision only
    assert model_input(ModelConfig(name="efficientnet_b1")) == (True, None, None, None)
    assert model_input(ModelConfig(name="timm/resnet18")).rgb is False


# --- building ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_builds_for_the_data_and_trains_a_step(name: str):
    channels = 1 if name.startswith("timm/") else 3  # timm takes the data's channels
    model = build_model(make_info(channels, 32, 7), ModelConfig(name=name))
    head = model.get_submodule(model.head_name)
    assert head.out_features == 7
    out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    assert head.weight.grad is not None


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", *TIMM[1:]])
def test_batchnorm_momentum_suits_short_runs(name: str):
    model = build_model(make_info(3, 32), ModelConfig(name=name))
    momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}  # torchvision sets 0.01 for mobilenet_v3 and efficientnet


def test_a_checkpoint_of_pretrained_weights_rebuilds_their_architecture(torch_hub: Path):
    """eval and export build without loading the weights (weights=False): googlenet with
    ImageNet weights transforms its input, and must again, with no file in the cache."""
    cfg = ModelConfig(name="googlenet", pretrained="imagenet")
    assert build_model(make_info(3, 64), cfg, weights=False).transform_input is True
    plain = build_model(make_info(3, 64), cfg.model_copy(update={"pretrained": "none"}))
    assert plain.transform_input is False


def test_a_size_the_model_cannot_take_is_refused_at_build():
    with pytest.raises(DltrainError, match=r"^vit_b_16 needs 224x224 inputs, the data has 32x32"):
        build_model(make_info(3, 32), ModelConfig(name="vit_b_16"))


def test_a_size_the_facts_do_not_know_is_found_by_a_dry_forward(monkeypatch):
    row = dict(facts.lookup("squeezenet1_1"), min_size=None)  # as for a model the meta
    monkeypatch.setitem(facts.table()["models"], "squeezenet1_1", row)  # device cannot tell
    with pytest.raises(DltrainError) as error:
        build_model(make_info(3, 8), ModelConfig(name="squeezenet1_1"))
    smallest = catalog.row("squeezenet1_1")["min_size"]
    assert str(error.value).startswith("squeezenet1_1 cannot take 8x8 inputs (")
    assert str(error.value).endswith(f"the smallest it takes is {smallest}x{smallest}: "
                                     f"set data.resize: {smallest}")  # fmt: skip


def test_without_timm_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(DltrainError, match=r"pip install 'dltrain\[timm\]'"):
        build_model(make_info(), ModelConfig(name="timm/resnet18"))


# --- pretrained weights from the libraries' caches -----------------------------------------


@pytest.fixture
def torch_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url: str, *args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_torchvision_weights_from_torch_hubs_cache(torch_hub: Path):
    from torchvision.models import MobileNet_V3_Small_Weights, get_model

    planted = get_model("mobilenet_v3_small").state_dict()
    torch_hub.mkdir(parents=True)
    url = MobileNet_V3_Small_Weights.IMAGENET1K_V1.url
    torch.save(planted, torch_hub / url.rsplit("/", 1)[1])
    cfg = ModelConfig(name="mobilenet_v3_small", pretrained="imagenet")
    state = build_model(make_info(3, 64, 4), cfg).state_dict()
    assert torch.equal(state["features.3.block.0.0.weight"], planted["features.3.block.0.0.weight"])
    assert state["classifier.3.weight"].shape == (4, 1024)


def test_torchvision_weights_missing_offline_say_what_to_put_where(torch_hub: Path):
    cfg = ModelConfig(name="efficientnet_b0", pretrained="imagenet")
    with pytest.raises(DltrainError) as error:
        build_model(make_info(), cfg)
    message = str(error.value)
    assert "put efficientnet_b0_rwightman-7f5810bc.pth (from https://" in message
    assert str(torch_hub) in message and "\n" not in message


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face Hub cache under tmp_path (timm loads its weights through it)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


@needs_timm
def test_timm_weights_from_the_hubs_cache(hf_cache: Path):
    import timm
    from safetensors.torch import save_file

    planted = timm.create_model("mobilenetv3_small_050").state_dict()
    repo = timm.get_pretrained_cfg("mobilenetv3_small_050").hf_hub_id
    folder = hf_cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(planted, folder / "snapshots" / commit / "model.safetensors")
    cfg = ModelConfig(name="timm/mobilenetv3_small_050", pretrained="imagenet")
    state = build_model(make_info(3, 32, 4), cfg).state_dict()
    assert torch.equal(state["blocks.1.0.conv_pw.weight"], planted["blocks.1.0.conv_pw.weight"])
    assert state["classifier.weight"].shape == (4, 1024)


@needs_timm
def test_timm_weights_missing_offline_say_what_to_put_where(hf_cache: Path):
    cfg = ModelConfig(name="timm/resnet18", pretrained="imagenet")
    with pytest.raises(DltrainError) as error:
        build_model(make_info(), cfg)
    message = str(error.value)
    assert "timm/resnet18.a1_in1k" in message and str(hf_cache) in message
    assert "\n" not in message


# --- every command, for a representative set -----------------------------------------------

CONFIG = """\
name: zoo
device: cpu
data:
  dataset: fake
  batch_size: 8
  val_split: 8
  fake: {{train_size: 24, test_size: 8, classes: 3, channels: 1, image_size: 32}}
model: {{name: {name}}}
train: {{epochs: 1, train_eval_size: 0, ema: {{decay: 0.9}}}}
checkpoint: {{interval: 0}}
"""


@pytest.mark.slow
@needs_onnx
@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_train_eval_export_with_parity(cli, write_config, tmp_path, name: str):
    config = write_config(CONFIG.format(name=name))
    result = cli("train", config, "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["best_weights"] in ("ema", "trained")  # EMA validated
    best = tmp_path / "run" / "best.pt"
    result = cli("eval", "--ckpt", best, "--json", "--tta", "flip")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["samples"] == 8 and 0 <= metrics["tta"]["acc"] <= 1
    result = cli("export", "--ckpt", best, "--format", "onnx")
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "run" / "best.onnx.json").read_text())
    assert sidecar["parity"]["passed"] and sidecar["input"]["shape"][1:] == [
        1 if name.startswith("timm/") else 3, 32, 32]  # fmt: skip
