"""Datasets -> splits -> batches, plus the `DataInfo` a model and a checkpoint need.

Datasets that fit in memory are held as one uint8 tensor (N, C, H, W) on the training
device; batches are cut from it, scaled and normalized batch-wise, never sample by
sample. Validation is carved out of the training data (seeded, stratified); the test
split is never read by training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from dltrain.config import DataConfig
from dltrain.errors import DltrainError
from dltrain.registry import Registry


@dataclass
class DataInfo:
    """What a model and a checkpoint need to know about a dataset."""

    name: str
    class_names: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataInfo:
        return cls(**{**data, "image_size": tuple(data["image_size"])})


@dataclass
class TensorSplit:
    """A split held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])

    def to(self, device: torch.device) -> TensorSplit:
        return TensorSplit(self.images.to(device), self.labels.to(device))


@dataclass
class RawData:
    """What a dataset builder returns: the official splits (val may be absent)."""

    info: DataInfo
    train: TensorSplit
    test: TensorSplit
    val: TensorSplit | None = None


@dataclass
class Splits:
    info: DataInfo
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    sizes: dict = field(default_factory=dict)


DATASETS: Registry = Registry("dataset")


def stratified_split(labels: torch.Tensor, size: float | int, seed: int):
    """Split indices into (keep, held): `held` has `size` samples (a fraction or a count),
    drawn per class in proportion to its frequency, so both parts keep the class balance."""
    n = len(labels)
    count = round(size * n) if size < 1 else int(size)
    if not 0 < count < n:
        raise DltrainError(
            f"data.val_split={size} leaves {count} of {n} samples for validation; "
            "choose a fraction or count that leaves samples on both sides"
        )
    generator = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)
    quota = counts.double() * count / n
    take = quota.floor().long()
    # Hand out what flooring lost to the classes with the largest remainders.
    missing = count - int(take.sum())
    if missing:
        order = torch.argsort(quota - take, descending=True, stable=True)
        take[order[:missing]] += 1
    keep, held = [], []
    for cls, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[:k])
        keep.append(members[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


class Batches:
    """Batches cut from an in-memory split on its device, scaled and normalized batch-wise.

    Shuffling draws a permutation from this loader's own generator (seeded, on the CPU), so
    the batch order is reproducible and its state can be saved with a checkpoint.
    """

    def __init__(
        self,
        split: TensorSplit,
        info: DataInfo,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ):
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        device = split.images.device
        shape = (1, info.channels, 1, 1)
        # x / 255 then (x - mean) / std folded into one multiply-add: x * scale + shift.
        std = torch.tensor(info.std, dtype=torch.float32, device=device).view(shape)
        mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(shape)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self):
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.split.images.device)
        for start in range(0, n, self.batch_size):
            if self.shuffle:
                index = order[start : start + self.batch_size]
                images, labels = self.split.images[index], self.split.labels[index]
            else:
                images = self.split.images[start : start + self.batch_size]
                labels = self.split.labels[start : start + self.batch_size]
            yield torch.addcmul(self.shift, images.float(), self.scale), labels


def build_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load the dataset named in the config and carve validation out of its training data."""
    raw = DATASETS.get(cfg.dataset)(cfg)
    train, val = raw.train, raw.val
    if val is None:
        keep, held = stratified_split(train.labels, cfg.val_split, seed)
        train, val = train.subset(keep), train.subset(held)
    sizes = {"train": len(train), "val": len(val), "test": len(raw.test)}
    return Splits(raw.info, train, val, raw.test, sizes)


def make_loader(
    splits: Splits, name: str, cfg: DataConfig, device: torch.device, seed: int = 0
) -> Batches:
    """A loader for one split; only `train` is shuffled."""
    split = getattr(splits, name).to(device)
    if name == "train":
        return Batches(split, splits.info, cfg.batch_size, shuffle=True, seed=seed)
    return Batches(split, splits.info, cfg.eval_batch_size)


# --- datasets ----------------------------------------------------------------------------

DIGITS_TEST_SEED = 20240613  # fixed: the digits test split never depends on the run's seed
DIGITS_TEST_FRACTION = 0.2


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> RawData:
    """scikit-learn's 1,797 real 8x8 handwritten digits (ships with the package, no network).

    Pixel values 0..16 are mapped to 0..255 so every dataset shares one uint8 format; a fixed
    20% stratified test split is held out before anything else.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).mul(255.0 / 16.0).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    full = TensorSplit(images.unsqueeze(1), labels)
    keep, held = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    info = DataInfo(
        name="digits",
        class_names=[str(int(c)) for c in bunch.target_names],
        channels=1,
        image_size=(8, 8),
        mean=[0.3053],
        std=[0.3760],
    )
    return RawData(info, train=full.subset(keep), test=full.subset(held))
