"""`imagefolder`: a folder of class sub-folders of image files, read through PIL.

Layout: <root>/<class>/<image> (val and test are then split off), or <root>/train/<class>/…
with optional <root>/val/ and <root>/test/. Every file is checked before training starts,
so a corrupt or non-image file is reported by name up front, not halfway through an epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from dltrain.config import DataConfig
from dltrain.data.core import DataInfo, DataSource, Splits
from dltrain.errors import DataNotFound, DltrainError
from dltrain.registry import DATASETS


class FileSplit(Dataset):
    """(path, label) pairs; images are opened as RGB and passed through `transform`."""

    def __init__(self, samples: list[tuple[str, int]], transform=None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def subset(self, index: torch.Tensor) -> FileSplit:
        return FileSplit([self.samples[i] for i in index.tolist()], self.transform)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as image:
            image = image.convert("RGB")
        return (self.transform(image) if self.transform else image), label


def _classes(folder: Path) -> list[str]:
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DltrainError(
            f"imagefolder: no class sub-folders in {folder}; expected {folder}/<class>/<image>"
        )
    return names


def _scan(folder: Path, classes: list[str], cfg: DataConfig, notes: list[str], sizes: dict):
    """Check every file of every class folder; returns (path, label) pairs of good images."""
    from PIL import Image

    extra = [name for name in _classes(folder) if name not in classes]
    if extra:
        raise DltrainError(
            f"imagefolder: {folder} has class folders that train/ lacks: {', '.join(extra)}"
        )
    samples = []
    for label, name in enumerate(classes):
        files = (folder / name).rglob("*")
        for path in sorted(p for p in files if p.is_file() and not p.name.startswith(".")):
            try:
                with Image.open(path) as image:
                    size = image.size
                    image.verify()  # reads the file and checks its structure without decoding
            except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bad files
                if not cfg.skip_bad_files:
                    raise DltrainError(
                        f"imagefolder: {path} is not a readable image ({type(err).__name__}); "
                        "remove it, or set data.skip_bad_files: true to skip such files"
                    ) from None
                notes.append(f"skipped {path}: not a readable image")
                continue
            sizes.setdefault(size, path)
            samples.append((str(path), label))
    if not samples:
        raise DltrainError(f"imagefolder: no readable images under {folder}")
    found = {label for _, label in samples}
    empty = [name for label, name in enumerate(classes) if label not in found]
    if empty and folder.name not in ("val", "test"):
        raise DltrainError(
            f"imagefolder: class folder(s) {', '.join(empty)} in {folder} hold no readable "
            "images; add images or remove the folder"
        )
    return samples


def _train_dir(cfg: DataConfig) -> Path:
    """The folder of the training classes: <root>/train if there is one, else <root>."""
    root = Path(cfg.root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "folder not found"
        error = DltrainError if root.exists() else DataNotFound
        raise error(
            f"imagefolder: {root} {what}; point data.root at a folder of class sub-folders "
            "(--set data.root=DIR)"
        )
    return root / "train" if (root / "train").is_dir() else root


def _info(classes: list[str], size: tuple[int, int]) -> DataInfo:
    """An image folder's DataInfo: RGB, normalized with ImageNet's mean and std."""
    return DataInfo("imagefolder", classes, 3, size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def imagefolder(cfg: DataConfig) -> Splits:
    root, train_dir = Path(cfg.root), _train_dir(cfg)
    classes = _classes(train_dir)
    notes: list[str] = []
    sizes: dict = {}
    splits = {"train": FileSplit(_scan(train_dir, classes, cfg, notes, sizes))}
    for name in ("val", "test"):
        if train_dir != root and (root / name).is_dir():
            splits[name] = FileSplit(_scan(root / name, classes, cfg, notes, sizes))
    if len(sizes) > 1 and not cfg.resize:
        examples = ", ".join(f"{p.name} {w}x{h}" for (w, h), p in list(sizes.items())[:2])
        raise DltrainError(
            f"imagefolder: images in {root} differ in size ({examples}); "
            "set data.resize to the size to train at"
        )
    size = (cfg.resize, cfg.resize) if cfg.resize else next(iter(sizes))[::-1]  # PIL's is (w, h)
    info = _info(classes, size)
    return Splits(info, splits["train"], splits.get("val"), splits.get("test"), notes)


def folder_info(cfg: DataConfig) -> DataInfo:
    """What `imagefolder` gives, from the class folders' names and the size of the first image
    that opens (none with data.resize), not from every file: the files are checked, and their
    sizes compared, when the data is loaded."""
    from PIL import Image

    train_dir = _train_dir(cfg)
    classes = _classes(train_dir)
    if cfg.resize:
        return _info(classes, (cfg.resize, cfg.resize))
    for name in classes:
        files = (train_dir / name).rglob("*")
        for path in sorted(p for p in files if p.is_file() and not p.name.startswith(".")):
            try:
                with Image.open(path) as image:  # reads the header only
                    return _info(classes, image.size[::-1])  # PIL's is (w, h)
            except Exception:  # noqa: BLE001 - PIL raises many kinds; try the next file
                continue
    raise DltrainError(f"imagefolder: no readable images under {train_dir}")


DATASETS.register("imagefolder")(DataSource(imagefolder, folder_info))


class FolderLoader:
    """A DataLoader over a FileSplit whose batches are moved to the training device."""

    def __init__(
        self,
        split: FileSplit,
        batch_size: int,
        shuffle: bool,
        seed: int,
        num_workers: int,
        device: torch.device,
        shard: tuple[int, int] = (0, 1),
        weights: torch.Tensor | None = None,
    ):
        from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

        self.generator = torch.Generator().manual_seed(seed)
        self.device, self.memory_format = device, torch.contiguous_format
        rank, world = shard
        # Each rank reads its padded share, reshuffled by set_epoch.
        self.sampler = DistributedSampler(split, world, rank, shuffle, seed) if world > 1 else None
        if weights is not None:  # data.sampler: balanced, drawn from this loader's generator
            self.sampler = WeightedRandomSampler(weights, len(split), generator=self.generator)
        self.loader = DataLoader(
            split,
            batch_size=batch_size,
            shuffle=shuffle and self.sampler is None,
            sampler=self.sampler,
            generator=self.generator,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=device.type == "cuda",
        )

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):  # a DistributedSampler reshuffles per epoch
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        for images, labels in self.loader:
            yield (
                images.to(self.device, non_blocking=True, memory_format=self.memory_format),
                labels.to(self.device, non_blocking=True),
            )
