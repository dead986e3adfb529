"""In-memory datasets held as one uint8 tensor: digits, fake, MNIST, Fashion-MNIST, CIFAR-10/100.

torchvision's datasets are read (and downloaded) by its own classes. A missing dataset that
cannot be downloaded is a one-line error naming the folder and the files expected there; files
a failed download left behind are removed, so a later run never takes them for the dataset.
"""

from __future__ import annotations

import contextlib
import io
from functools import partial
from pathlib import Path

import torch

from dltrain.config import DataConfig
from dltrain.data.core import TEST_SEED, DataInfo, Splits, TensorSplit, stratified_split
from dltrain.errors import DltrainError
from dltrain.registry import DATASETS


@DATASETS.register("digits")
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
    info = DataInfo("digits", [str(c) for c in range(10)], 1, (8, 8), [0.3053], [0.3760])
    return Splits(info, train=full.subset(keep), test=full.subset(held))


@DATASETS.register("fake")
def fake(cfg: DataConfig) -> Splits:
    """torchvision's FakeData (random images, random labels): for smoke tests only."""
    from torchvision.datasets import FakeData
    from torchvision.transforms import PILToTensor

    channels = cfg.fake.channels
    shape = (channels, cfg.fake.image_size, cfg.fake.image_size)

    def load(size: int, offset: int) -> TensorSplit:
        data = FakeData(size, shape, cfg.fake.classes, PILToTensor(), random_offset=offset)
        images, labels = zip(*(data[i] for i in range(size)), strict=True)
        return TensorSplit(torch.stack(images), torch.tensor(labels, dtype=torch.long))

    names = [f"class{i}" for i in range(cfg.fake.classes)]
    info = DataInfo("fake", names, channels, shape[1:], [0.5] * channels, [0.25] * channels)
    train, test = load(cfg.fake.train_size, 0), load(cfg.fake.test_size, cfg.fake.train_size)
    return Splits(info, train=train, test=test)


# name -> (torchvision class, per-channel mean, per-channel std of the training set)
TORCHVISION = {
    "mnist": ("MNIST", [0.1307], [0.3081]),
    "fashion_mnist": ("FashionMNIST", [0.2860], [0.3530]),
    "cifar10": ("CIFAR10", [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ("CIFAR100", [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _load_torchvision(name: str, cfg: DataConfig) -> Splits:
    """torchvision's MNIST, FashionMNIST, CIFAR10 or CIFAR100: official train and test splits."""
    from torchvision import datasets

    class_name, mean, std = TORCHVISION[name]
    cls = getattr(datasets, class_name)
    root = Path(cfg.root)
    if root.exists() and not root.is_dir():
        raise DltrainError(f"data.root {root} is a file; point it at the folder for datasets")
    if hasattr(cls, "resources"):  # the MNIST family: IDX files in <root>/<Class>/raw
        folder = root / cls.__name__ / "raw"
        expected = [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
    else:
        folder = root / cls.base_folder
        expected = [file for file, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    present = all((folder / f).is_file() for f in expected)
    before = _files_under(root)
    try:
        # torchvision prints each failed mirror; the one line below says it all.
        with contextlib.redirect_stdout(io.StringIO()):
            train = cls(str(root), train=True, download=cfg.download and not present)
            test = cls(str(root), train=False, download=False)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line below
        for path in _files_under(root) - before:
            path.unlink(missing_ok=True)  # never leave a half download that looks like data
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if present:
            raise DltrainError(
                f"{name}: could not read the files in {folder} ({reason}); they may be damaged: "
                "delete them and download again"
            ) from None
        attempt, fix = "", "set data.download: true, or copy the files there"
        if cfg.download:
            attempt = f" and the download failed ({reason})"
            fix = f"download it where there is internet and copy it to {folder}"
        raise DltrainError(
            f"{name}: dataset not found in {folder} (expected {', '.join(expected)}){attempt}; "
            f"{fix}, or point data.root at the folder that holds it"
        ) from None
    info = DataInfo(name, list(train.classes), len(mean), tuple(train.data.shape[1:3]), mean, std)
    return Splits(info, train=_as_tensors(train), test=_as_tensors(test))


def _as_tensors(dataset) -> TensorSplit:
    images = torch.as_tensor(dataset.data)  # uint8; MNIST family: (N, H, W), CIFAR: (N, H, W, C)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
    return TensorSplit(images, torch.as_tensor(dataset.targets, dtype=torch.long))


for _name in TORCHVISION:
    DATASETS.register(_name)(partial(_load_torchvision, _name))
