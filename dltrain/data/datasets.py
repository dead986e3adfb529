"""In-memory datasets held as one uint8 tensor: digits, fake, MNIST, Fashion-MNIST, CIFAR-10/100.

torchvision's datasets are read (and downloaded) by its own classes. A missing dataset that
cannot be downloaded is a one-line error naming the folder and the files expected there; files
and folders a failed download left behind are removed, so a later run never takes them for the
dataset. What each dataset holds is known without reading it (KNOWN, `fake_info`): commands that
need shapes only (`dltrain summary`) read and download nothing.
"""

from __future__ import annotations

import contextlib
import io
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from dltrain.config import DataConfig
from dltrain.data.core import (
    TEST_SEED,
    DataInfo,
    DataSource,
    Splits,
    TensorSplit,
    stratified_split,
)
from dltrain.errors import DataNotFound, DltrainError
from dltrain.registry import DATASETS

CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
# The fine labels in label-number order, as the dataset's meta file lists them.
CIFAR100_CLASSES = """
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split()


class Known(NamedTuple):
    """A dataset's facts, known without reading it: the torchvision class that reads it (None:
    it ships with a package), its images' size, its training set's per-channel mean and std
    (of 0-1 pixels; their count is the channels) and its class names (None: the torchvision
    class's own `classes`)."""

    reader: str | None
    size: tuple[int, int]
    mean: list[float]
    std: list[float]
    classes: list[str] | None = None


KNOWN = {
    "digits": Known(None, (8, 8), [0.3053], [0.3760], [str(c) for c in range(10)]),
    "mnist": Known("MNIST", (28, 28), [0.1307], [0.3081]),
    "fashion_mnist": Known("FashionMNIST", (28, 28), [0.2860], [0.3530]),
    "cifar10": Known(
        "CIFAR10", (32, 32), [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], CIFAR10_CLASSES
    ),
    "cifar100": Known(
        "CIFAR100", (32, 32), [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762], CIFAR100_CLASSES
    ),
}


def known_info(name: str, cfg: DataConfig | None = None) -> DataInfo:
    """The DataInfo of a dataset in KNOWN, as stored (before any gray->RGB or resize); `cfg` is
    not read: these facts do not depend on it."""
    known = KNOWN[name]
    classes = known.classes
    if classes is None:  # MNIST, Fashion-MNIST: a class attribute, no file is read
        from torchvision import datasets

        classes = getattr(datasets, known.reader).classes
    return DataInfo(name, list(classes), len(known.mean), known.size, known.mean, known.std)


def digits(cfg: DataConfig) -> Splits:
    """scikit-learn's 1,797 real 8x8 handwritten digits (ships with the package, no network).
    Pixel values 0..16 are mapped to 0..255 so every dataset shares one uint8 format; a fixed
    20% stratified test split is held out before anything else."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).mul(255.0 / 16.0).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    full = TensorSplit(images.unsqueeze(1), labels)
    keep, held = stratified_split(labels, 0.2, TEST_SEED, "test_split")
    return Splits(known_info("digits"), train=full.subset(keep), test=full.subset(held))


def fake_info(cfg: DataConfig) -> DataInfo:
    """`fake` holds the images data.fake describes."""
    channels, size = cfg.fake.channels, cfg.fake.image_size
    names = [f"class{i}" for i in range(cfg.fake.classes)]
    return DataInfo("fake", names, channels, (size, size), [0.5] * channels, [0.25] * channels)


def fake(cfg: DataConfig) -> Splits:
    """torchvision's FakeData (random images, random labels): for smoke tests only."""
    from torchvision.datasets import FakeData
    from torchvision.transforms import PILToTensor

    info = fake_info(cfg)
    shape = (info.channels, *info.image_size)

    def load(size: int, offset: int) -> TensorSplit:
        data = FakeData(size, shape, info.num_classes, PILToTensor(), random_offset=offset)
        images, labels = zip(*(data[i] for i in range(size)), strict=True)
        return TensorSplit(torch.stack(images), torch.tensor(labels, dtype=torch.long))

    train, test = load(cfg.fake.train_size, 0), load(cfg.fake.test_size, cfg.fake.train_size)
    return Splits(info, train=train, test=test)


def _entries_under(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.is_dir() else set()


def _remove_new(root: Path, before: set[Path], missing: list[Path]) -> None:
    """Remove what a failed attempt left: the files and folders under `root` that were not in
    `before`, and the folders of `missing` (root and its parents that did not exist). A file
    is never left to be taken for data; a folder that someone else filled meanwhile stays."""
    new = _entries_under(root) - before
    for path in new:
        if not path.is_dir():
            path.unlink(missing_ok=True)
    for folder in sorted({*filter(Path.is_dir, new), *missing}, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):  # not empty, or gone already
            folder.rmdir()


def _where(cls, root: Path) -> tuple[Path, list[str]]:
    """The folder torchvision's class `cls` reads under `root`, and the files it needs there."""
    if hasattr(cls, "resources"):  # the MNIST family: IDX files in <root>/<Class>/raw
        expected = [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
        return root / cls.__name__ / "raw", expected
    files = [file for file, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return root / cls.base_folder, files


def _load_torchvision(name: str, cfg: DataConfig) -> Splits:
    """torchvision's MNIST, FashionMNIST, CIFAR10 or CIFAR100: official train and test splits.
    Downloaded only with data.download; without it nothing is written and no folder made."""
    from torchvision import datasets

    known = KNOWN[name]
    cls = getattr(datasets, known.reader)
    root = Path(cfg.root)
    if root.exists() and not root.is_dir():
        raise DltrainError(f"data.root {root} is a file; point it at the folder for datasets")
    folder, expected = _where(cls, root)
    present = all((folder / f).is_file() for f in expected)
    before, missing = _entries_under(root), [p for p in (root, *root.parents) if not p.exists()]
    try:
        # torchvision prints each failed mirror; the one line below says it all.
        with contextlib.redirect_stdout(io.StringIO()):
            train = cls(str(root), train=True, download=cfg.download and not present)
            test = cls(str(root), train=False, download=False)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line below
        _remove_new(root, before, missing)  # never leave a half download that looks like data
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if present:
            raise DltrainError(
                f"{name}: could not read the files in {folder} ({reason}); they may be damaged: "
                "delete them and download again"
            ) from None
        raise DataNotFound(_not_found(name, folder, expected, cfg.download, reason)) from None
    classes, size = list(train.classes), tuple(train.data.shape[1:3])
    info = DataInfo(name, classes, len(known.mean), size, known.mean, known.std)
    return Splits(info, train=_as_tensors(train), test=_as_tensors(test))


def _not_found(name: str, folder: Path, expected: list[str], download: bool, reason: str) -> str:
    """What was looked for where, and the ways out (as --set, which every command takes)."""
    looked = f"{name}: dataset not found in {folder} (expected {', '.join(expected)})"
    if download:
        return (
            f"{looked} and the download failed ({reason}); download it where there is internet "
            f"and copy it to {folder}, or point data.root at the folder that holds it "
            "(--set data.root=DIR)"
        )
    return (
        f"{looked}; point data.root at the folder that holds it (--set data.root=DIR), or "
        "download it there (--set data.download=true)"
    )


def _as_tensors(dataset) -> TensorSplit:
    images = torch.as_tensor(dataset.data)  # uint8; MNIST family: (N, H, W), CIFAR: (N, H, W, C)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
    return TensorSplit(images, torch.as_tensor(dataset.targets, dtype=torch.long))


DATASETS.register("digits")(DataSource(digits, partial(known_info, "digits")))
DATASETS.register("fake")(DataSource(fake, fake_info))
for _name, _known in KNOWN.items():
    if _known.reader is not None:
        DATASETS.register(_name)(
            DataSource(partial(_load_torchvision, _name), partial(known_info, _name))
        )
