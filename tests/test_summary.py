"""The model summary (`models.layer_summary`, `dltrain summary`) and the MACs on the start line:
numbers checked against hand counts, and a count that leaves training untouched."""

import json
import math

import pytest
import torch
from torch import nn

from dltrain.cli.summary import short_bytes, short_count
from dltrain.config import ModelConfig
from dltrain.data import DataInfo
from dltrain.models import build_model, count_macs, count_parameters, layer_summary
from dltrain.reporting.runs import read_metrics
from dltrain.training.engine import fit


def _info(channels=3, size=32, classes=10) -> DataInfo:
    names = [str(i) for i in range(classes)]
    return DataInfo("test", names, channels, (size, size), [0.5] * channels, [0.25] * channels)


def _model(info: DataInfo, **model) -> nn.Module:
    torch.manual_seed(0)
    return build_model(info, ModelConfig(**model))


def _rows(figures: dict) -> dict:
    return {row["name"]: row for row in figures["rows"]}


def test_mlp_macs_are_the_linear_layers_in_times_out():
    info = _info(channels=1, size=8)
    model = _model(info, name="mlp", hidden=[256, 128], dropout=0.1)
    figures = layer_summary(model, info, batch_size=32)
    hand = (64 * 256) + (256 * 128) + (128 * 10)
    assert figures["totals"]["macs"] == count_macs(model, info) == hand == 50_432
    rows = _rows(figures)
    assert [rows[name]["macs"] for name in ("features.1", "features.4", "head")] == [
        64 * 256,
        256 * 128,
        128 * 10,
    ]


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28)])
def test_cnn_macs_follow_the_conv_formula(channels, size):
    """C_in·C_out·k²·H_out·W_out per 3x3 conv (padding 1, so H_out = H_in), the size halving
    after each block (28 -> 14 -> 7 -> 3), plus the head's in×out."""
    info = _info(channels, size)
    model = _model(info, name="cnn", channels=[32, 64, 128], batch_norm=True)
    rows, hand, side = _rows(layer_summary(model, info, 8)), 0, size
    convs = [name for name, row in rows.items() if row["type"] == "Conv2d"]
    for name, (c_in, c_out) in zip(convs, [(channels, 32), (32, 64), (64, 128)], strict=True):
        assert rows[name]["macs"] == c_in * c_out * 9 * side * side
        hand += c_in * c_out * 9 * side * side
        side //= 2
    assert rows["head"]["macs"] == 128 * side * side * 10
    assert count_macs(model, info) == hand + 128 * side * side * 10


MODELS = [
    ("mlp", {"hidden": [32], "batch_norm": True, "dropout": 0.2}),
    ("cnn", {"channels": [16, 32], "batch_norm": True, "dropout": 0.1}),
    ("alexnet", {}),
    ("resnet18", {}),
]


@pytest.mark.parametrize("name, options", MODELS, ids=[m[0] for m in MODELS])
def test_totals_are_the_sums_of_the_rows(name, options):
    info = _info()
    model = _model(info, name=name, **options)
    figures = layer_summary(model, info, batch_size=4)
    totals, rows = figures["totals"], figures["rows"]
    for key in ("params", "trainable", "frozen", "macs", "activation_bytes"):
        assert totals[key] == sum(row[key] for row in rows), key
    assert totals["params"] == count_parameters(model)
    assert totals["macs"] == count_macs(model, info) > 0
    assert len({row["name"] for row in rows}) == len(rows)


def test_frozen_parameters_are_counted_apart():
    info = _info()
    model = _model(info, name="cnn", channels=[32, 64], batch_norm=True)
    for param in model.features[0].parameters():  # the first conv: 3·32·9 weights + 32 biases
        param.requires_grad = False
    figures = layer_summary(model, info, batch_size=4)
    first, totals = figures["rows"][0], figures["totals"]
    assert (first["name"], first["trainable"], first["frozen"]) == ("features.0", 0, 896)
    assert totals["frozen"] == 896
    assert totals["trainable"] + totals["frozen"] == totals["params"] == count_parameters(model)
    assert totals["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_output_shapes():
    info = _info()
    rows = _rows(layer_summary(_model(info, name="cnn", channels=[32, 64, 128]), info, 4))
    assert rows["features.0"]["output"] == (1, 32, 32, 32)
    assert rows["features.2"]["output"] == (1, 32, 16, 16)
    assert rows["features.9"]["output"] == (1, 128 * 4 * 4)  # Flatten
    assert rows["head"]["output"] == (1, 10)
    rows = _rows(layer_summary(_model(info, name="resnet18"), info, 4))
    assert rows["conv1"]["output"] == (1, 64, 32, 32)  # the small-input stem keeps 32 px
    assert rows["layer4.1.bn2"]["output"] == (1, 512, 4, 4)
    assert rows["fc"]["output"] == (1, 10)


@pytest.mark.parametrize("precision, value_bytes", [("float32", 4), ("bfloat16", 2)])
def test_activation_estimate_is_the_new_outputs_of_a_batch(precision, value_bytes):
    """The definition: batch × bytes per value × the values of each layer output that is a new
    tensor. In the MLP: Linear and Dropout outputs (ReLU is in place, Flatten a view); in the
    CNN: conv, max-pool, Dropout and head outputs."""
    info, batch = _info(channels=1, size=8), 32
    mlp = _model(info, name="mlp", hidden=[256, 128], dropout=0.1)
    figures = layer_summary(mlp, info, batch, precision)
    values = (256 + 256) + (128 + 128) + 10
    assert figures["totals"]["activation_bytes"] == batch * value_bytes * values
    assert figures["totals"]["value_bytes"] == value_bytes
    rows = _rows(figures)
    assert rows["features.0"]["activation_bytes"] == rows["features.2"]["activation_bytes"] == 0
    cnn = _model(info, name="cnn", channels=[32, 64], dropout=0.1)
    values = (32 * 8 * 8 + 32 * 4 * 4) + (64 * 4 * 4 + 64 * 2 * 2) + 256 + 10
    total = layer_summary(cnn, info, batch, precision)["totals"]["activation_bytes"]
    assert total == batch * value_bytes * values


def test_counting_leaves_the_model_and_rng_as_they_were():
    info = _info()
    model = _model(info, name="cnn", channels=[16, 32], batch_norm=True, dropout=0.5)
    model.train()
    model.features[1].eval()  # a module in another mode than its parent keeps it
    before = {key: value.clone() for key, value in model.state_dict().items()}
    modes = [module.training for module in model.modules()]
    rng = torch.get_rng_state()
    count_macs(model, info)
    layer_summary(model, info, batch_size=8)
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # BN statistics too
    assert [module.training for module in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert not model.features[0]._forward_hooks  # the summary's hooks are gone


RUN = {
    "name": "macs_run",
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "digits", "val_split": 0.2, "batch_size": 64},
    "model": {"name": "cnn", "channels": [8, 16], "batch_norm": True, "dropout": 0.2},
    "train": {"epochs": 2},
}


def test_training_is_bit_identical_with_and_without_the_count(tmp_path, monkeypatch):
    from dltrain.config import validate
    from dltrain.training import session as sessions

    with_count = fit(validate(RUN), tmp_path / "with")
    monkeypatch.setattr(sessions, "count_macs", lambda model, info: 0)
    without = fit(validate(RUN), tmp_path / "without")
    assert with_count.facts.macs == 1 * 8 * 9 * 8 * 8 + 8 * 16 * 9 * 4 * 4 + 16 * 2 * 2 * 10
    assert without.facts.macs == 0

    def runs(folder):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(folder)]

    assert runs(tmp_path / "with") == runs(tmp_path / "without")
    assert with_count.final_val == without.final_val
    weights = [torch.load(tmp_path / d / "last.pt")["model"] for d in ("with", "without")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    saved = json.loads((tmp_path / "with" / "summary.json").read_text())
    assert saved["macs"] == with_count.facts.macs


def test_summary_command_prints_the_table_and_totals(cli):
    result = cli("summary", "configs/digits_mlp.yaml")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "digits_mlp: mlp on digits, input 1×8×8, 10 classes"
    assert any(line.split()[:3] == ["features.1", "Linear", "1×256"] for line in lines)
    assert any(line.split() == ["total", "50,826", "0", "50.4k"] for line in lines)
    assert "params 50,826 (50,826 trainable, 0 frozen)  MACs 50.4k per image" in result.stdout
    assert "activations ≈ 97.2 KiB per batch of 32 at float32: an estimate" in result.stdout


def test_summary_command_on_resnet18(cli):
    result = cli("summary", "configs/smoke/resnet18.yaml", "--set", "data.batch_size=8")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(
        line.split()[:3] == ["layer4.0.downsample.0", "Conv2d", "1×512×4×4"] for line in lines
    )
    assert any(line.split() == ["total", "11,173,962", "0", "555M"] for line in lines)
    assert "per batch of 8 at float32" in result.stdout


def test_train_start_line_shows_macs(cli, digits_config, tmp_path):
    result = cli("train", digits_config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    start = result.stdout.splitlines()[0]
    assert "  params 4,810  MACs 4.74k/image  train/val/test" in start  # 64·64 + 64·10


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["missing.yaml"], 1, "error: config file not found: missing.yaml"),
        (["configs/digits_mlp.yaml", "--set", "model.hiden=3"], 2, "did you mean model.hidden?"),
        (["configs/digits_mlp.yaml", "--set", "oops"], 2, "expected KEY=VALUE"),
        (["configs/digits_mlp.yaml", "--set", "model.name=vgg"], 2, "model.name"),
    ],
)
def test_bad_input_is_one_line(cli, args, code, message):
    result = cli("summary", *args)
    assert result.exit_code == code
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "n, count, size",
    [
        (0, "0", "0 B"),
        (842, "842", "842 B"),
        (50_432, "50.4k", "49.2 KiB"),
        (999_499, "999k", "976 KiB"),
        (999_500, "1.00M", "976 KiB"),
        (555_422_720, "555M", "530 MiB"),
        (math.prod([2] * 40), "1.10T", "1.00 TiB"),
    ],
)
def test_short_counts_and_bytes(n, count, size):
    assert short_count(n) == count
    assert short_bytes(n) == size
