"""Commands that need no data: `data_info` against what loading gives, and `dltrain summary`
of every shipped config on a machine without data."""

import urllib.request
from pathlib import Path

import pytest
import torchvision

from dltrain.config import DataConfig, load_config
from dltrain.config.schema import image_size
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
    """The size comes from the first image that opens; the other files are not opened."""
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
    assert resized.image_size == (32, 32) and opened == []  # data.resize: no image read


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
