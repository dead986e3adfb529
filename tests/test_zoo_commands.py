"""The zoos through the commands: `dltrain models`, the issue's "done when" runs (train,
evaluate, predict, export with parity), summary, and finetune from planted ImageNet weights."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from dltrain.models import facts

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated")
needs_timm = pytest.mark.skipif(
    find_spec("timm") is None, reason="needs pip install 'dltrain[timm]'"
)
needs_onnx = pytest.mark.skipif(
    any(find_spec(name) is None for name in ("onnx", "onnxruntime", "onnxscript")),
    reason="needs pip install 'dltrain[export]'",
)


@needs_timm
def test_models_lists_both_zoos(cli):
    result = cli("models")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "source", "params"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows["resnet18"][1:3] == ["course", "11,689,512"]
    assert rows["mobilenet_v3_small"][1:4] == ["torchvision", "2,542,856", "IMAGENET1K_V1"]
    assert rows["timm/resnet18"][1:4] == ["timm", "11,689,512", "a1_in1k"]
    assert rows["vit_b_16"][-2:] == ["224", "only"]
    assert lines[-1] == f"{len(facts.names()):,} models" == f"{len(rows):,} models"


@needs_timm
def test_models_glob_pretrained_and_json(cli):
    result = cli("models", "timm/mobilenetv3_small*", "--pretrained", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    names = [row["name"] for row in listed]
    assert names == ["timm/mobilenetv3_small_050", "timm/mobilenetv3_small_075",
                     "timm/mobilenetv3_small_100"]  # fmt: skip
    assert all(row["weights"] and row["source"] == "timm" for row in listed)
    every = json.loads(cli("models", "timm/mobilenetv3_*", "--json").stdout)
    assert len(every) > len(names)  # mobilenetv3_large_075 has no ImageNet weights


def test_models_without_a_match_is_one_line(cli):
    result = cli("models", "*convnxt*")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: no model matches '*convnxt*' (a glob: '*convnext*'); did you mean convnext_tiny?"
    )


def test_summary_of_a_zoo_model(cli):
    result = cli("summary", "configs/digits_cnn.yaml", "--set", "model.name=mobilenet_v3_small",
                 "--set", "data.resize=32")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "input 3×32×32" in result.stdout and "classifier.3" in result.stdout


# The "done when": the course's digits config with a zoo model, at 32 px.
DONE_WHEN = ["mobilenet_v3_small", pytest.param("timm/resnet18", marks=needs_timm)]


@pytest.mark.slow
@pytest.mark.parametrize("name", DONE_WHEN)
def test_done_when_train_evaluate_predict_export(cli, tmp_path: Path, name: str):
    run = tmp_path / "run"
    quick = ["--set", "train.epochs=1", "--set", "train.train_eval_size=0"]  # the test's own
    result = cli("train", "configs/digits_cnn.yaml", "--set", f"model.name={name}",
                 "--set", "data.resize=32", *quick, "--out", run)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"input {'3' if name == 'mobilenet_v3_small' else '1'}×32×32" in result.stdout
    result = cli("eval", "--ckpt", run / "best.pt", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(result.stdout)["acc"] == pytest.approx(summary["best_metrics"]["val_acc"])
    image = tmp_path / "seven.png"
    from PIL import Image

    Image.new("L", (8, 8), 128).save(image)
    result = cli("predict", "--ckpt", run / "best.pt", image, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)[0]["top"]) == 3
    # ONNX with parity: test_zoo.py's representative set, these two included
    result = cli("export", "--ckpt", run / "best.pt", "--format", "torchscript")
    assert result.exit_code == 0, result.output
    sidecar = json.loads((run / "best.ts.json").read_text())
    assert sidecar["parity"]["passed"] and sidecar["parity"]["source"] == "validation"


FINETUNE = """\
name: ft
device: cpu
data:
  dataset: fake
  batch_size: 8
  val_split: 8
  resize: 32
  fake: {train_size: 24, test_size: 8, classes: 3, channels: 1, image_size: 16}
model: {name: mobilenet_v3_small}
train: {epochs: 1, train_eval_size: 0}
"""


@pytest.mark.slow
def test_finetune_from_imagenet_freezes_all_but_the_found_head(
    cli, tmp_path: Path, monkeypatch, write_config
):
    from torchvision.models import MobileNet_V3_Small_Weights, get_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    planted = get_model("mobilenet_v3_small").state_dict()
    torch.save(planted, cache / MobileNet_V3_Small_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1])
    config = write_config(FINETUNE)
    result = cli("finetune", config, "--from", "imagenet", "--out", tmp_path / "ft")
    assert result.exit_code == 0, result.output
    # gray repeated to RGB, the weights' mean/std; the size is the config's own
    assert "input 3×32×32 (mean/std of the mobilenet_v3_small weights (IMAGENET1K_V1))" in (
        result.stdout
    )
    tuned = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    for key, value in tuned.items():
        if key.startswith("classifier.3."):
            assert value.shape[0] == 3, key
        else:  # the backbone and its BatchNorm statistics, frozen
            assert torch.equal(value, planted[key]), key


def _offline(url: str, *args, **kwargs):
    raise URLError("no network in tests")


def test_a_sweep_space_over_model_names_is_checked():
    from dltrain.config import validate
    from dltrain.errors import ConfigError

    space = {"model.name": "choice([mobilenet_v3_small, timm/resnet18])"}
    assert validate({"sweep": {"params": space}}).sweep.params == space
    with pytest.raises(ConfigError, match=r"did you mean timm/resnet18\?"):
        validate({"sweep": {"params": {"model.name": "choice([cnn, timm/resnt18])"}}})


LR_FIND = FINETUNE.replace("{name: mobilenet_v3_small}", "{name: regnet_y_400mf}").replace(
    "train: {epochs: 1, train_eval_size: 0}", "train: {epochs: 1, ema: {decay: 0.9}}"
)


@pytest.mark.slow
def test_lr_find_with_a_zoo_model(cli, tmp_path: Path, write_config):
    result = cli("lr-find", write_config(LR_FIND), "--steps", "8", "--out", tmp_path / "lr")
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert len(found["seeds"][0]["lrs"]) == 8 and found["config"]["train"]["ema"]["decay"] == 0.9


@pytest.mark.slow
@needs_timm
def test_two_processes_train_a_zoo_model(tmp_path: Path, name: str = "timm/mobilenetv3_small_050"):
    import subprocess
    import sys

    config = tmp_path / "ddp.yaml"
    config.write_text(FINETUNE.replace("mobilenet_v3_small", name))
    run = subprocess.run(
        [sys.executable, "-m", "dltrain", "train", config, "--nproc", "2", "--out", tmp_path / "r"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("× 2 processes") == 1
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "finished"
