"""Shared pieces of the data layer: DataInfo, in-memory splits, stratified splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

import torch

from dltrain.errors import ConfigError, DltrainError

if TYPE_CHECKING:
    from dltrain.config import DataConfig

TEST_SEED = 20240613  # a carved-out test split never depends on the run's seed


@dataclass
class DataInfo:
    """What a model, a checkpoint and `predict` need to know about the data as the model sees
    it: classes, channels and size after any gray->RGB or resize, and the normalization."""

    name: str
    class_names: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    to_dict = asdict
    with_ = replace  # a copy with some fields changed

    def stats(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as float32 (1, C, 1, 1) tensors: what normalizes a batch."""
        shape, kind = (1, -1, 1, 1), torch.float32
        mean = torch.tensor(self.mean, dtype=kind, device=device).view(shape)
        return mean, torch.tensor(self.std, dtype=kind, device=device).view(shape)

    def unnormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized images (N, C, H, W) back to 0..1 pixels: x * std + mean, clamped."""
        mean, std = self.stats(images.device)
        return (images.float() * std + mean).clamp_(0.0, 1.0)

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
class Splits:
    """A dataset's `info` and splits: each a TensorSplit, or a file-backed dataset with `labels`
    and `subset` (image folders). A dataset builder leaves `val` and `test` None where the
    dataset has none; `build_splits` carves them out of train. `cache`: a file-backed split
    is decoded into a TensorSplit the first time a loader needs it (`FileSplit.in_memory`)."""

    info: DataInfo
    train: object
    val: object | None = None
    test: object | None = None
    notes: list[str] = field(default_factory=list)
    cache: bool = False

    @property
    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class DataSource(NamedTuple):
    """A dataset as the registry holds it: `load` reads (or downloads) it; `info` says what it
    holds (classes, channels, size, mean and std) from what is known without reading it, for
    commands that need shapes, not images (`dltrain summary`)."""

    load: Callable[[DataConfig], Splits]
    info: Callable[[DataConfig], DataInfo]


def stratified_split(labels: torch.Tensor, size: float | int, seed: int, what: str = "val_split"):
    """Split indices into (keep, held): `held` has `size` samples (a fraction or a count),
    drawn per class in proportion to its frequency, so both parts keep the class balance."""
    n = len(labels)
    count = round(size * n) if size < 1 else int(size)
    if not 0 < count < n:
        asks = f"asks for {count:,} of the {n:,} samples" if count >= n else "leaves none"
        raise ConfigError(
            [f"data.{what}={size} {asks} for that split; choose a fraction or a count that "
             "leaves samples on both sides"]
        )  # fmt: skip
    classes, counts = labels.unique(return_counts=True)
    quota = counts.double() * count / n
    take = quota.floor().long()
    # Hand out what flooring lost to the classes with the largest remainders.
    take[torch.argsort(quota - take, descending=True, stable=True)[: count - int(take.sum())]] += 1
    emptied = [str(c) for c in classes[take == counts].tolist()]
    if emptied:
        raise DltrainError(
            f"data.{what}={size} leaves no training samples of class(es) {', '.join(emptied)}; "
            "choose a smaller split"
        )
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros_like(labels, dtype=torch.bool)
    for cls, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (labels == cls).nonzero().flatten()
        held[members[torch.randperm(len(members), generator=generator)[:k]]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights that draw every class equally often: 1 / (samples of its class)."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].double()
