"""Datasets -> splits -> batches, plus the `DataInfo` a model and a checkpoint need.

Datasets that fit in memory are held as one uint8 tensor (N, C, H, W) on the training device;
batches are cut from it and converted, resized, augmented and normalized batch-wise, never
sample by sample. An image folder is decoded once into such a tensor when it fits
(`data.cache`), else its files are read by DataLoader workers every epoch into batches of the
same uint8 shape, which go through the same conversion. Validation is carved out of the
training data (seeded, stratified); the test split is never read by training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dltrain.config import AugmentConfig, DataConfig, NormalizeStats
from dltrain.data import datasets as _datasets  # noqa: F401 - registers the datasets
from dltrain.data import folder as _folder
from dltrain.data.augment import BatchAugment, Mixup, tta_views
from dltrain.data.core import (
    TEST_SEED,
    DataInfo,
    Splits,
    TensorSplit,
    balanced_weights,
    stratified_split,
)
from dltrain.errors import DltrainError
from dltrain.registry import DATASETS

__all__ = [
    "DATASETS",
    "Batches",
    "DataInfo",
    "Mixup",
    "Splits",
    "TensorSplit",
    "build_splits",
    "data_info",
    "for_model",
    "make_loader",
    "stratified_split",
    "tta_views",
]


def for_model(cfg: DataConfig, wants) -> DataConfig:
    """The data config as the model asks for it (`wants`: a models.facts.Input): an unset
    data.resize takes the pretrained weights' size, `normalize: auto` their mean and std (or,
    without weights, the dataset's). What the config sets itself stays."""
    update = {}
    if cfg.resize is None and wants.size:
        update["resize"] = wants.size
    if cfg.normalize == "auto":
        stats = wants.mean is not None
        update["normalize"] = NormalizeStats(mean=wants.mean, std=wants.std) if stats else "dataset"
    return cfg.model_copy(update=update)


def _model_view(info: DataInfo, cfg: DataConfig, rgb: bool) -> DataInfo:
    """The data as the model sees it: after gray->RGB, resize and the normalization choice."""
    if rgb and info.channels == 1:
        info = info.with_(channels=3, mean=info.mean * 3, std=info.std * 3)
    if cfg.resize:
        info = info.with_(image_size=(cfg.resize, cfg.resize))
    if cfg.normalize == "none":
        info = info.with_(mean=[0.0] * info.channels, std=[1.0] * info.channels)
    elif cfg.normalize == "auto":  # the model's wishes, when known, come through for_model
        pass
    elif not isinstance(cfg.normalize, str):
        if len(cfg.normalize.mean) != info.channels:
            raise DltrainError(
                f"data.normalize has {len(cfg.normalize.mean)} mean value(s) but the images "
                f"reach the model with {info.channels} channel(s); give {info.channels}"
            )
        info = info.with_(mean=list(cfg.normalize.mean), std=list(cfg.normalize.std))
    return info


def build_splits(
    cfg: DataConfig, seed: int, rgb: bool = False, device: torch.device | None = None
) -> Splits:
    """Load the dataset named in the config; carve test (if it has none) and validation out
    of its training data. `rgb` repeats gray channels for models that need colour input. An
    image folder's splits learn how their files are read, and whether they are decoded once
    into memory (`data.cache`, on `device`)."""
    raw = DATASETS.get(cfg.dataset).load(cfg)
    train, val, test = raw.train, raw.val, raw.test
    if test is None:
        keep, held = stratified_split(train.labels, cfg.test_split, TEST_SEED, "test_split")
        train, test = train.subset(keep), train.subset(held)
    if val is None:
        keep, held = stratified_split(train.labels, cfg.val_split, cfg.split_seed_for(seed))
        train, val = train.subset(keep), train.subset(held)
    splits = Splits(_model_view(raw.info, cfg, rgb), train, val, test, list(raw.notes))
    if isinstance(train, _folder.FileSplit):
        crops = bool(cfg.augment.random_resized_crop)
        train.look, val.look = _folder.looks(cfg, raw.info.channels, crops)
        test.look = val.look
        splits.cache = _cache_choice(cfg, splits, raw.info, device or torch.device("cpu"))
    return splits


def _available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes of memory available for a cache, and where: the GPU's free memory on CUDA (the
    cache lives there), else the host's MemAvailable (what Linux could give without swapping)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, "free on the GPU"
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024, "available"
    except (OSError, KeyError, ValueError):
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free"


def _cache_choice(cfg: DataConfig, splits: Splits, raw: DataInfo, device: torch.device) -> bool:
    """data.cache: ram, off, or auto: ram when training's splits decoded take at most a quarter
    of the memory available; auto says which it chose and why in a note."""
    if cfg.cache != "auto":
        return cfg.cache == "ram"
    need = sum(_folder.decoded_bytes(split, raw) for split in (splits.train, splits.val))
    have, where = _available_memory(device)
    fits = need <= have // 4
    look = splits.train.look
    size = f"{look.size}x{look.size}" if look.size else "x".join(map(str, raw.image_size))
    what = f"{len(splits.train) + len(splits.val):,} images at {look.channels}x{size}"
    sizes = f"{need / 2**20:,.0f} MiB of the {have / 2**30:,.1f} GiB {where}"
    if fits:
        text = f"data.cache auto: the image folder is decoded once into memory ({what}: {sizes})"
    else:
        text = (
            f"data.cache auto: the image folder is read from its files every epoch ({what} "
            f"would take {sizes}, over a quarter); data.cache: ram decodes it anyway"
        )
    splits.notes.append(text)
    return fits


def data_info(cfg: DataConfig, rgb: bool = False) -> DataInfo:
    """`build_splits(cfg, seed, rgb).info` without loading the data: from the facts known of
    the dataset (an image folder: its class folders and one image). Reads no image data,
    downloads nothing and creates no folder; a missing image folder is still an error."""
    return _model_view(DATASETS.get(cfg.dataset).info(cfg), cfg, rgb)


# Put before the user's --set by the commands that read a checkpoint's data (eval, export): a
# stored `download: true` was meant for the machine that trained, and must not make folders or
# fetch data wherever the checkpoint is opened; the user's own --set data.download=true wins.
NO_DOWNLOAD = "data.download=false"


class Batches:
    """Batches cut from an in-memory split on its device and converted batch-wise. Shuffling
    and augmentation draw from this loader's own generator (seeded, on the CPU), so the order
    is reproducible and its state can be saved with a checkpoint.

    `shard=(rank, world)` (distributed training): every rank draws the same permutation, pads it
    to a multiple of `world` (as DistributedSampler does) and takes every world-th index from
    `rank` on. Each rank then has as many batches as the others, and the union of the ranks'
    k-th batches is the k-th batch one process would take at `world` times the size. With
    `weights` (data.sampler: balanced) an epoch's order is drawn with replacement instead.
    """

    def __init__(
        self,
        split: TensorSplit,
        info: DataInfo,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        shard: tuple[int, int] = (0, 1),
        weights: torch.Tensor | None = None,
        device: torch.device | None = None,
    ):
        self.split, self.batch_size, self.shuffle, self.weights = (
            split,
            batch_size,
            shuffle,
            weights,
        )
        self.rank, self.world = shard
        self.generator = torch.Generator().manual_seed(seed)
        self.memory_format = torch.contiguous_format  # channels_last for conv nets on CUDA
        enabled = augment is not None and any(augment.model_dump().values())  # 0 or false: off
        self.augment = BatchAugment(augment, self.generator) if enabled else None
        self.device = device = device or split.images.device
        self.channels, self.size = info.channels, tuple(info.image_size)
        self.mean, self.std = info.stats(device)
        # Common case, no conversion: x / 255 then (x - mean) / std as one multiply and add.
        stored = self._stored_shape(split, info)
        self.plain = self.augment is None and stored == (self.channels, *self.size)
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = -self.mean / self.std

    def _stored_shape(self, split: TensorSplit, info: DataInfo) -> tuple:
        return tuple(split.images.shape[1:])

    def __len__(self) -> int:
        return -(-len(self.split) // (self.world * self.batch_size))  # ceil(n / world / batch)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the order comes from the generator, in step on every rank."""

    def convert(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalized float, resized, RGB and augmented as configured."""
        if self.plain:
            # In place on the float copy: 2-3x faster than one type-promoting addcmul (CPU,
            # batches of 32-1024; bench/overhead.py).
            x = images.float().mul_(self.scale).add_(self.shift)
            if self.memory_format is torch.contiguous_format:
                return x
            return x.contiguous(memory_format=self.memory_format)
        x = images.float().mul_(1.0 / 255.0)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        # A random resized crop resamples to the size itself, from all the pixels there are.
        crops = self.augment is not None and self.augment.cfg.random_resized_crop
        if tuple(x.shape[2:]) != self.size and not crops:
            x = F.interpolate(x, self.size, mode="bilinear", antialias=True, align_corners=False)
        if self.augment is not None:
            x = self.augment(x, self.size)
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def order(self) -> torch.Tensor | None:
        """This epoch's order of the samples (this rank's share), drawn from the generator;
        None: in the split's own order (not shuffled)."""
        if not self.shuffle:
            return None
        n, weights = len(self.split), self.weights
        if weights is None:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.multinomial(weights, n, replacement=True, generator=self.generator)
        if self.world > 1:
            order = torch.cat([order, order[: (-n) % self.world]])[self.rank :: self.world]
        return order

    def __iter__(self):
        images, labels = self.split.images, self.split.labels
        order = self.order()
        if order is None:
            for start in range(0, len(labels), self.batch_size):
                end = start + self.batch_size
                yield self.convert(images[start:end]), labels[start:end]
            return
        order = order.to(images.device, non_blocking=True)  # no stream sync on CUDA
        for start in range(0, len(order), self.batch_size):
            # index_select, not images[index]: the same gather at a fraction of the cost
            # of advanced indexing (CPU: 3 us against 12 us for 32 MNIST images).
            index = order[start : start + self.batch_size]
            yield self.convert(images.index_select(0, index)), labels.index_select(0, index)


class _Chunks:
    """A DataLoader's batch sampler whose batches `FileBatches` sets before each epoch."""

    def __init__(self, count: int):
        self.count, self.batches = count, []

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter(self.batches)


class FileBatches(Batches):
    """Batches of an image folder read from its files every epoch (data.cache off): the order,
    conversion and augmentation of `Batches`, the files read into uint8 batches by DataLoader
    workers ahead of the step that needs them. Same seed, same batches as the folder decoded
    into memory."""

    def __init__(
        self, split, info, batch_size, shuffle, seed, augment, shard, weights, device, workers
    ):
        from torch.utils.data import DataLoader

        super().__init__(split, info, batch_size, shuffle, seed, augment, shard, weights, device)
        self.chunks = _Chunks(len(self))
        self.loader = DataLoader(
            split,
            batch_sampler=self.chunks,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )

    def _stored_shape(self, split, info: DataInfo) -> tuple:
        look = split.look
        return (look.channels, *((look.size, look.size) if look.size else info.image_size))

    def __iter__(self):
        order = self.order()
        order = torch.arange(len(self.split)) if order is None else order
        self.chunks.batches = [chunk.tolist() for chunk in order.split(self.batch_size)]
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield self.convert(images), labels.to(self.device, non_blocking=True)


TRAIN_EVAL_SEED = 1234  # which training samples the overfitting signal measures: fixed


def make_loader(
    splits: Splits,
    name: str,
    cfg: DataConfig,
    device: torch.device,
    seed: int = 0,
    size: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress=None,
):
    """A loader for one split; only `train` is shuffled and augmented. `train_eval` is a fixed
    subset of `size` training samples, read like validation (no shuffle, no augmentation).
    `shard=(rank, world)` gives this process its part: for training, a padded share of every
    epoch's permutation; for the others, every world-th sample, no padding, so that sums over
    the ranks cover the split exactly once. An image folder's split with `splits.cache` is
    decoded here the first time (`progress(done, total, name)` hears how far)."""
    rank, world = shard
    train = name == "train"
    base = "train" if name == "train_eval" else name
    split = getattr(splits, base)
    if splits.cache and isinstance(split, _folder.FileSplit):
        report = (lambda done, total: progress(done, total, base)) if progress else None
        split = split.in_memory(report)  # decoded once: the next loader of it reads memory
    if name == "train_eval":
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(TRAIN_EVAL_SEED))
        split = split.subset(order[: size or len(split)].sort().values)
    if world > 1 and not train:
        split = split.subset(torch.arange(rank, len(split), world))
        shard = (0, 1)  # this rank's part, cut here: its loader reads all of it
    batch_size = cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size)
    weights = balanced_weights(split.labels) if train and cfg.sampler == "balanced" else None
    augment = cfg.augment if train else None
    if isinstance(split, TensorSplit):
        split = split.to(device)
        return Batches(split, splits.info, batch_size, train, seed, augment, shard, weights)
    return FileBatches(
        split,
        splits.info,
        batch_size,
        train,
        seed,
        augment,
        shard,
        weights,
        device,
        cfg.num_workers,
    )
