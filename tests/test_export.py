"""`dltrain export`: both formats for every model (trained 1 epoch on tiny fake data), the
sidecar, the parity check and its failure, and the one-line errors."""

import errno
import hashlib
import json
import os
import sys
from importlib.util import find_spec

import pytest
import torch

# The test loads TorchScript files itself: torch 2.14 calls torch.jit.load deprecated.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated")

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
# Without the extra (dltrain[export], part of [dev]) the ONNX cases are skipped, not failed.
needs_onnx = pytest.mark.skipif(
    any(find_spec(name) is None for name in ("onnx", "onnxruntime", "onnxscript")),
    reason="needs pip install 'dltrain[export]'",
)
FORMAT_PARAMS = [pytest.param("onnx", marks=needs_onnx), "torchscript"]

# Small and valid for each model (as configs/smoke/*.yaml): alexnet needs >= 15 px with its
# small-input stem; resnet18's 3x3 stem keeps 16 px from shrinking to nothing.
MODELS = {
    "mlp": ("{name: mlp, hidden: [16], batch_norm: true}", 1, 8),
    "cnn": ("{name: cnn, channels: [4, 8], batch_norm: true, dropout: 0.1}", 3, 16),
    "alexnet": ("{name: alexnet, small_input: true}", 1, 16),
    "resnet18": ("{name: resnet18, small_input: true}", 3, 16),
}
CONFIG = """\
name: export_{model}
device: cpu
data:
  dataset: fake
  batch_size: 16
  val_split: 0.25
  fake: {{train_size: 48, test_size: 8, classes: 5, channels: {channels}, image_size: {size}}}
model: {spec}
optim: {{name: sgd, lr: 0.01}}
train: {{epochs: 1}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(model) -> its run folder, trained once for the module (1 epoch, CPU)."""
    from typer.testing import CliRunner

    from dltrain.cli import app

    runs = {}

    def get(model: str):
        if model not in runs:
            spec, channels, size = MODELS[model]
            root = tmp_path_factory.mktemp(model)
            config = root / "config.yaml"
            config.write_text(CONFIG.format(model=model, spec=spec, channels=channels, size=size))
            result = CliRunner().invoke(app, ["train", str(config), "--run-dir", str(root / "r")])
            assert result.exit_code == 0, result.output
            runs[model] = root / "r"
        return runs[model]

    return get


def _reference(ckpt):
    """The checkpoint's own model, normalizing as training did: what the file must match."""
    from dltrain.training.checkpoint import open_saved

    saved = open_saved(ckpt, ["device=cpu"])
    model, _ = saved.model()
    mean = torch.tensor(saved.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(saved.info.std).view(1, -1, 1, 1)
    return lambda x: model((x - mean) / std).detach(), saved.info


def _run_file(fmt, path):
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert isinstance(session.get_inputs()[0].shape[0], str)  # a named, dynamic batch
        return lambda x: torch.from_numpy(session.run(None, {"pixels": x.numpy()})[0])
    module = torch.jit.load(str(path))
    return lambda x: module(x).detach()


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "model",
    ["mlp", "cnn", *(pytest.param(m, marks=pytest.mark.slow) for m in ("alexnet", "resnet18"))],
)
@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_export_writes_a_checked_file_and_its_sidecar(cli, trained, model, fmt):
    run = trained(model)
    ckpt, out = run / "best.pt", run / f"best{FORMATS[fmt]}"
    result = cli("export", "--ckpt", ckpt, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # the exporters' own chatter is kept quiet
    assert f"to {out}" in result.stdout and "top-1 agreement 100%" in result.stdout
    assert not [p.name for p in run.iterdir() if "tmp" in p.name]

    side = json.loads((run / f"{out.name}.json").read_text())
    reference, info = _reference(ckpt)
    _, channels, size = MODELS[model]
    assert side["format"] == fmt and side["file"] == out.name and side["model"] == model
    assert side["input"] == {
        "name": "pixels",
        "dtype": "float32",
        "range": [0.0, 1.0],
        "layout": "NCHW",
        "shape": ["batch", channels, size, size],
        "channels": channels,
        "image_size": [size, size],
    }
    assert side["output"]["shape"] == ["batch", 5]
    assert side["normalization"] == {"inside": True, "mean": info.mean, "std": info.std}
    assert side["class_names"] == info.class_names
    assert side["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert side["checkpoint"] == str(ckpt) and side["opset" if fmt == "onnx" else "exporter"]
    parity = side["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["images"] == 12
    assert parity["batch_sizes"] == [12, 1] and 0 <= parity["max_abs_diff"] <= 1e-4
    assert parity["source"] == "validation" and "parity on 12 validation images" in result.stdout

    # Fresh inputs at batch sizes the export never saw.
    run_file = _run_file(fmt, out)
    for batch in (1, 3, 7):
        x = torch.rand(batch, channels, size, size)
        torch.testing.assert_close(run_file(x), reference(x), atol=1e-4, rtol=0)


@needs_onnx
def test_out_and_opset_are_honoured(cli, trained, tmp_path):
    import onnx

    out = tmp_path / "digits.onnx"
    args = ["export", "--ckpt", trained("mlp") / "best.pt", "--format", "onnx", "--out", out]
    assert cli(*args).exit_code == 0
    assert "give --force to replace it" in cli(*args, "--opset", "21").stderr
    result = cli(*args, "--opset", "21", "--force")  # replaces the first
    assert result.exit_code == 0, result.output
    assert {o.domain: o.version for o in onnx.load(out).opset_import}[""] == 21
    assert json.loads((tmp_path / "digits.onnx.json").read_text())["opset"] == 21
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.onnx", "digits.onnx.json"]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--format", "onnx", "--opset", "17"], ["--opset 17: expected 18 to 25"]),
        (["--format", "onnx", "--opset", "99"], ["--opset 99: expected 18 to 25"]),
        (["--format", "torchscript", "--opset", "18"], ["--opset is for --format onnx"]),
        (["--format", "torchscript", "--out", "{tmp}/no/x.ts"], ["the folder", "does not exist"]),
        (["--format", "torchscript", "--out", "{tmp}"], ["is a folder"]),
        (["--format", "torchscript", "--out", "{ckpt}"], ["is the checkpoint itself"]),
    ],
)
def test_bad_options_are_one_line(cli, trained, tmp_path, args, fragments):
    ckpt = trained("mlp") / "best.pt"
    args = [a.format(tmp=tmp_path, ckpt=ckpt) for a in args]
    before = sorted(p.name for p in ckpt.parent.iterdir())
    _one_line_error(cli("export", "--ckpt", ckpt, *args), *fragments)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == before


@pytest.mark.parametrize(
    "args, option",
    [(["--format", "tflite"], "--format"), (["--format", "onnx", "--opset", "new"], "--opset")],
)
def test_values_of_the_wrong_kind_are_usage_errors(cli, tmp_path, args, option):
    """A choice or a number on the command line: typer checks it before anything is read
    (exit 2, the usage), naming the option."""
    result = cli("export", "--ckpt", tmp_path / "best.pt", *args)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.stderr
    assert not list(tmp_path.iterdir())


def test_bad_checkpoints_are_one_line(cli, tmp_path):
    missing = tmp_path / "missing.pt"
    _one_line_error(cli("export", "--ckpt", missing, "--format", "torchscript"), "not found")
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(2)}, bare)
    _one_line_error(
        cli("export", "--ckpt", bare, "--format", "torchscript"), "not a dltrain checkpoint"
    )


def test_onnx_without_the_extra_names_it(cli, trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    result = cli("export", "--ckpt", trained("mlp") / "best.pt", "--format", "onnx")
    _one_line_error(result, "is missing", "pip install 'dltrain[export]'")


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
@pytest.mark.parametrize("spoil", [lambda y: y + 1e-3, lambda y: y.flip(1)], ids=["differ", "top1"])
def test_parity_failure_keeps_nothing(cli, trained, tmp_path, monkeypatch, fmt, spoil):
    import dltrain.tools.export

    real = dltrain.tools.export.load_exported

    def spoiled(fmt, path):  # the file as written, its logits changed on the way out
        run = real(fmt, path)
        return lambda x: spoil(run(x))

    monkeypatch.setattr(dltrain.tools.export, "load_exported", spoiled)
    out = tmp_path / f"model{FORMATS[fmt]}"
    out.write_bytes(b"an earlier export")
    ckpt = trained("mlp") / "best.pt"
    result = cli("export", "--ckpt", ckpt, "--format", fmt, "--out", out, "--force")
    _one_line_error(result, "parity check failed", f"{out} was not written")
    assert out.read_bytes() == b"an earlier export"  # not replaced by the failed one
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def _net():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()


@pytest.mark.parametrize(
    "spoil, passed",
    [
        (lambda y: y, True),
        (lambda y: y + 5e-5, True),
        (lambda y: y + 2e-4, False),
        (lambda y: y.flip(1), False),
        (lambda y: y * float("nan"), False),
        (lambda y: y[:, :2], False),
    ],
    ids=["same", "within", "beyond", "top1", "nan", "shape"],
)
def test_check_parity_thresholds(spoil, passed):
    from dltrain.tools.export import check_parity

    net, pixels = _net(), torch.rand(6, 1, 2, 2)
    with torch.no_grad():
        net[1].weight.copy_(torch.arange(12.0).view(3, 4))  # distinct logits: no top-1 ties
    parity = check_parity(net, lambda x: spoil(net(x)), pixels)
    assert parity["passed"] is passed and parity["batch_sizes"] == [6, 1]
    assert parity["tolerance"] == 1e-4 and parity["images"] == 6


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_full_or_failing_disk_is_one_line_and_leaves_nothing(
    cli, trained, tmp_path, monkeypatch, fmt, code
):
    """The exported file's write fails (TorchScript used to abort the whole process, ONNX to
    print a traceback): one line naming the file and the free space; no file, no leftover."""
    import builtins

    ckpt, real_open = trained("mlp") / "best.pt", builtins.open

    def failing_open(path, mode="r", *args, **kwargs):
        if ".tmp-" in str(path) and "w" in mode:
            raise OSError(code, os.strerror(code))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    out = tmp_path / f"model{FORMATS[fmt]}"
    result = cli("export", "--ckpt", ckpt, "--format", fmt, "--out", out)
    _one_line_error(result, f"could not write {out}", os.strerror(code), "bytes free there")
    assert list(tmp_path.iterdir()) == []


def test_json_is_the_sidecar_and_quiet_the_exported_line(cli, trained, tmp_path):
    args = ["export", "--ckpt", trained("mlp") / "best.pt", "--format", "torchscript"]
    as_json = cli(*args, "--out", tmp_path / "j.ts", "--json")
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.stdout)
    assert result["path"] == str(tmp_path / "j.ts") and result["parity"]["passed"]
    assert result == {**json.loads((tmp_path / "j.ts.json").read_text()), **result}
    quiet = cli(*args, "--out", tmp_path / "q.ts", "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout.startswith("exported ") and len(quiet.stdout.splitlines()) == 1
