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
from dltrain.data import images
from dltrain.data.core import DataInfo, DataSource, Splits, TensorSplit
from dltrain.data.images import Look
from dltrain.errors import DataNotFound, DltrainError
from dltrain.registry import DATASETS


class FileSplit(Dataset):
    """(path, label) pairs; an item is the file read as `look` says (`images.read`): a uint8
    tensor of one shape for every file, so batches are stacked, then converted and augmented
    batch-wise on the device like an in-memory split's."""

    def __init__(self, samples: list[tuple[str, int]], look: Look | None = None):
        self.samples = samples
        self.look = look
        self.decoded: TensorSplit | None = None

    def in_memory(self, progress=None) -> TensorSplit:
        """The split decoded once into memory (`decode`), kept for the next caller."""
        if self.decoded is None:
            self.decoded = decode(self, progress)
        return self.decoded

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def subset(self, index: torch.Tensor) -> FileSplit:
        return FileSplit([self.samples[i] for i in index.tolist()], self.look)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return images.read(path, self.look), label


def _classes(folder: Path) -> list[str]:
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DltrainError(
            f"imagefolder: no class sub-folders in {folder}; expected {folder}/<class>/<image>"
        )
    return names


def _scan(
    folder: Path, classes: list[str], cfg: DataConfig, notes: list[str], sizes: dict, modes: dict
):
    """Check every file of every class folder; returns (path, label) pairs of good images.
    `sizes` and `modes` gather the images' sizes (one file each) and PIL modes (counts)."""
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
                    size, mode = image.size, image.mode
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
            modes[mode] = modes.get(mode, 0) + 1
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


def _info(classes: list[str], size: tuple[int, int], channels: int) -> DataInfo:
    """An image folder's DataInfo, normalized with ImageNet's mean and std (gray: their mean)."""
    if channels == 1:
        return DataInfo("imagefolder", classes, 1, size, [0.449], [0.226])
    return DataInfo("imagefolder", classes, 3, size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _channels(modes: dict, notes: list[str]) -> int:
    """1 when every image is gray, else 3 (gray images of a mixed folder become RGB)."""
    channels = 1 if all(images.is_gray(mode) for mode in modes) else 3
    if len(modes) > 1:
        counts = ", ".join(f"{mode} {count:,}" for mode, count in sorted(modes.items()))
        kind = "gray (1 channel)" if channels == 1 else "RGB (3 channels)"
        notes.append(f"imagefolder: the images mix PIL modes ({counts}); all are read as {kind}")
    return channels


def imagefolder(cfg: DataConfig) -> Splits:
    root, train_dir = Path(cfg.root), _train_dir(cfg)
    classes = _classes(train_dir)
    notes: list[str] = []
    sizes, modes = {}, {}
    splits = {"train": FileSplit(_scan(train_dir, classes, cfg, notes, sizes, modes))}
    for name in ("val", "test"):
        if train_dir != root and (root / name).is_dir():
            splits[name] = FileSplit(_scan(root / name, classes, cfg, notes, sizes, modes))
    if len(sizes) > 1 and not cfg.resize:
        examples = ", ".join(f"{p.name} {w}x{h}" for (w, h), p in list(sizes.items())[:2])
        raise DltrainError(
            f"imagefolder: images in {root} differ in size ({examples}); "
            "set data.resize to the size to train at"
        )
    size = (cfg.resize, cfg.resize) if cfg.resize else next(iter(sizes))[::-1]  # PIL's is (w, h)
    info = _info(classes, size, _channels(modes, notes))
    return Splits(info, splits["train"], splits.get("val"), splits.get("test"), notes)


def folder_info(cfg: DataConfig) -> DataInfo:
    """What `imagefolder` gives, from the class folders' names and the size of the first image
    that opens (its mode says gray or colour), not from every file: the files are checked, and
    their sizes and modes compared, when the data is loaded."""
    from PIL import Image

    train_dir = _train_dir(cfg)
    classes = _classes(train_dir)
    for name in classes:
        files = (train_dir / name).rglob("*")
        for path in sorted(p for p in files if p.is_file() and not p.name.startswith(".")):
            try:
                with Image.open(path) as image:  # reads the header only
                    size = (cfg.resize, cfg.resize) if cfg.resize else image.size[::-1]
                    return _info(classes, size, 1 if images.is_gray(image.mode) else 3)
            except Exception:  # noqa: BLE001 - PIL raises many kinds; try the next file
                continue
    raise DltrainError(f"imagefolder: no readable images under {train_dir}")


DATASETS.register("imagefolder")(DataSource(imagefolder, folder_info))


def looks(cfg: DataConfig, channels: int, train_crops: bool) -> tuple[Look, Look]:
    """How training files and the others are read: at data.resize by data.resize_mode, in the
    folder's own channels (a model that wants RGB gets gray repeated batch-wise). With random
    resized crop, training files keep a margin (`images.margin_size`) for the crops."""
    size = cfg.resize
    train_size = images.margin_size(size) if size and train_crops else size
    return Look(train_size, cfg.resize_mode, channels), Look(size, cfg.resize_mode, channels)


def decoded_bytes(split: FileSplit, info: DataInfo) -> int:
    """What `decode` of the split holds: uint8 pixels, one byte per channel and pixel."""
    look = split.look
    h, w = (look.size, look.size) if look.size else info.image_size
    return len(split) * look.channels * h * w


def decode(split: FileSplit, progress=None) -> TensorSplit:
    """Every file of `split` read once, as its `look` says, into one uint8 tensor: from then on
    an in-memory split like MNIST's. Threads decode in parallel (PIL lets go of the GIL while
    it decodes and resizes); `progress(done, total)` hears how far it got."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    n, look = len(split), split.look
    first = images.read(split.samples[0][0], look)
    pixels = torch.empty((n, *first.shape), dtype=torch.uint8)
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    chunk = 64 * max(workers or 1, 1)
    with ThreadPoolExecutor(max(workers or 1, 1)) as pool:
        for start in range(0, n, chunk):
            paths = [path for path, _ in split.samples[start : start + chunk]]
            for i, image in enumerate(pool.map(images.read, paths, [look] * len(paths))):
                pixels[start + i] = image
            if progress is not None:
                progress(min(start + chunk, n), n)
    return TensorSplit(pixels, split.labels)
