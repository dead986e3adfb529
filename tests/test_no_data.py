"""Commands that need no data, and commands that open a checkpoint's data without downloading:
`data_info` against what loading gives, `dltrain summary` of every shipped config on a machine
without data, and eval, export, predict and lr-find of a run whose data is gone."""

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
import torchvision

from dltrain.config import DataConfig, load_config
from dltrain.config.data import image_size
from dltrain.data import DATASETS, build_splits, data_info
from dltrain.errors import DataNotFound
from tests.formats import digits_as_mnist, write_cifar, write_idx, write_pngs

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(REPO.glob("configs/*.yaml")) + sorted(REPO.glob("configs/smoke/*.yaml"))


@pytest.fixture
def offline(monkeypatch):
    """Every download fails as it does without a network."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _write(name: str, root: Path, monkeypatch) -> None:
    """A small copy of dataset `name` in its real format under `root` (nothing for those that
    ship with the package or are made up)."""
    if name in ("mnist", "fashion_mnist"):
        train, test = digits_as_mnist(60, 20)
        write_idx(root, "MNIST" if name == "mnist" else "FashionMNIST", train, test)
    elif name in ("cifar10", "cifar100"):
        # torchvision checks the official archives' md5; self-written files cannot match.
        monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
        write_cifar(root, 10 if name == "cifar10" else 100, n_train=400, n_test=100)
    elif name == "imagefolder":
        write_pngs(root, {"cat": 6, "dog": 6, "fox": 6}, size=(10, 14))


SHAPES = [
    {},
    {"rgb": True},
    {"resize": 20},
    {"normalize": "none"},
    {"rgb": True, "resize": 24, "normalize": {"mean": [0.5] * 3, "std": [0.2] * 3}},
]


@pytest.mark.parametrize("view", SHAPES, ids=["as-stored", "rgb", "resize", "plain", "all"])
@pytest.mark.parametrize("name", DATASETS.names())
def test_data_info_is_what_loading_gives(tmp_path, monkeypatch, name, view):
    """For every registered dataset, read from files in its real format."""
    _write(name, tmp_path, monkeypatch)
    view = dict(view)
    rgb = view.pop("rgb", False)
    cfg = DataConfig(dataset=name, root=str(tmp_path), download=False, val_split=0.2, **view)
    assert data_info(cfg, rgb) == build_splits(cfg, seed=0, rgb=rgb).info


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if n != "imagefolder"])
def test_data_info_reads_and_makes_nothing(tmp_path, offline, name):
    root = tmp_path / "nothing" / "here"
    info = data_info(DataConfig(dataset=name, root=str(root)))
    assert info.num_classes in (10, 100) and info.channels in (1, 3)
    assert list(tmp_path.iterdir()) == []


def test_schema_image_size_agrees_with_data_info():
    """The schema's torch-free copy of the sizes (for checks before any data is read)."""
    for name in DATASETS.names():
        cfg = DataConfig(dataset=name, root="/nonexistent")
        if name != "imagefolder":
            assert image_size(cfg) == data_info(cfg).image_size[0], name


def test_image_folder_info_reads_one_image(tmp_path, monkeypatch):
    """The size and the channels (gray or colour) come from the first image that opens; the
    other files are not opened."""
    from PIL import Image

    write_pngs(tmp_path, {"cat": 3, "dog": 3}, size=(10, 14))
    (tmp_path / "cat" / "0.png").write_bytes(b"not an image")  # skipped, as loading would
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a: opened.append(path) or real_open(path))
    info = data_info(DataConfig(dataset="imagefolder", root=str(tmp_path)))
    assert info.class_names == ["cat", "dog"] and info.image_size == (10, 14)
    assert [Path(p).name for p in opened] == ["0.png", "1.png"]
    opened.clear()
    resized = data_info(DataConfig(dataset="imagefolder", root=str(tmp_path), resize=32))
    # data.resize sets the size; the first image still says gray or colour.
    assert resized.image_size == (32, 32) and resized.channels == 3
    assert [Path(p).name for p in opened] == ["0.png", "1.png"]


def test_a_missing_image_folder_is_data_not_found(tmp_path):
    with pytest.raises(DataNotFound, match=r"nope folder not found; .*--set data.root=DIR"):
        data_info(DataConfig(dataset="imagefolder", root=str(tmp_path / "nope")))
    assert not (tmp_path / "nope").exists()


def _tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_summary_of_every_shipped_config_needs_no_data(cli, tmp_path, monkeypatch, offline,
                                                       config):  # fmt: skip
    """On a machine without any dataset (data.root: an empty folder; cwd an empty folder)
    summary answers and creates nothing: no ./data/MNIST/raw, no weights in torch's cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # where ImageNet weights would go
    root = tmp_path / "empty"
    root.mkdir()
    dataset = load_config(config).data.dataset
    if dataset == "imagefolder":
        write_pngs(root, {"cat": 2, "dog": 2})
    before = _tree(tmp_path)
    result = cli("summary", config, "--set", f"data.root={root}")
    assert result.exit_code == 0, result.output
    assert f" on {dataset}, input " in result.stdout.splitlines()[0]
    assert _tree(tmp_path) == before


# --- a run whose data is gone --------------------------------------------------------------

RUN_CONFIG = """\
name: gone
device: cpu
data: {{dataset: mnist, root: {root}, download: true, val_split: 0.25, batch_size: 16}}
model: {{name: mlp, hidden: [16]}}
train: {{epochs: 1}}
"""


@pytest.fixture(scope="module")
def gone(tmp_path_factory):
    """A run trained on MNIST-format files whose folder was then deleted: its checkpoint's
    data.root (with download: true) points at nothing, as on another machine."""
    from typer.testing import CliRunner

    from dltrain.cli import app

    base = tmp_path_factory.mktemp("gone")
    root = base / "data"
    write_idx(root, "MNIST", *digits_as_mnist(60, 20))
    (base / "config.yaml").write_text(RUN_CONFIG.format(root=root))
    result = CliRunner().invoke(
        app, ["train", str(base / "config.yaml"), "--run-dir", str(base / "run")]
    )
    assert result.exit_code == 0, result.output
    shutil.rmtree(root)
    return base / "run" / "best.pt", root


def _one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_eval_never_downloads_where_the_checkpoint_points(cli, gone, offline):
    ckpt, root = gone
    line = _one_line_error(cli("eval", "--ckpt", ckpt))
    assert f"mnist: dataset not found in {root}/MNIST/raw" in line
    assert "--set data.root=DIR" in line and "--set data.download=true" in line
    assert "download failed" not in line  # not even tried
    assert not root.exists()


def test_eval_downloads_when_the_user_says_so(cli, gone, offline):
    """--set data.download=true is the user's own: honoured (here it fails, offline), and the
    folders the attempt made are removed."""
    ckpt, root = gone
    line = _one_line_error(cli("eval", "--ckpt", ckpt, "--set", "data.download=true"))
    assert "and the download failed" in line
    assert not root.exists()


def test_eval_reads_the_data_where_the_user_points(cli, gone, tmp_path):
    ckpt, _ = gone
    write_idx(tmp_path, "MNIST", *digits_as_mnist(60, 20))
    result = cli("eval", "--ckpt", ckpt, "--set", f"data.root={tmp_path}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 15


def test_export_checks_parity_on_random_images_without_the_data(cli, gone, offline, tmp_path):
    ckpt, root = gone
    out = tmp_path / "model.ts"
    result = cli("export", "--ckpt", ckpt, "--format", "torchscript", "--out", out)
    assert result.exit_code == 0, result.output
    notes = result.stderr.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: parity is checked on 64 random images")
    assert f"dataset not found in {root}/MNIST/raw" in notes[0]
    assert "parity on 64 random images" in result.stdout
    parity = json.loads(out.with_name("model.ts.json").read_text())["parity"]
    assert parity["source"] == "random" and parity["seed"] == 0 and parity["passed"]
    assert "dataset not found" in parity["why"]
    assert out.is_file() and not root.exists()


def test_predict_needs_no_data(cli, gone, tmp_path):
    from PIL import Image

    ckpt, root = gone
    Image.new("L", (28, 28), 0).save(tmp_path / "blank.png")
    result = cli("predict", "--ckpt", ckpt, tmp_path / "blank.png")
    assert result.exit_code == 0, result.output
    assert not root.exists()


def test_lr_find_without_data_is_one_line(cli, gone, offline, tmp_path, monkeypatch):
    """lr-find trains, so it needs the data (a config's download: true may fetch it)."""
    _, root = gone
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(RUN_CONFIG.format(root=root))
    result = cli("lr-find", config, "--out", tmp_path / "probe")
    assert result.exit_code == 1, result.output
    start, line = result.stderr.strip().splitlines()  # its start line, then the error
    assert start.startswith("lr-find gone: ") and line.startswith("error: mnist: dataset not found")
    assert "download failed" in line
    assert not root.exists() and not (tmp_path / "probe").exists()
