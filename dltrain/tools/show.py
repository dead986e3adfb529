"""`dltrain show`: a split's images as the model receives them, drawn with their class names.

The data is built as training builds it (session.model_data: the config, its `--set` changes
and the model's wishes for size and mean/std; then data.make_loader), so the picture shows
what training will read: the training split shuffled and augmented (mixed too, with
data.mixup), the validation split plain. The images are un-normalized for display only.
"""

from __future__ import annotations

from pathlib import Path

from dltrain.config import Config
from dltrain.errors import ConfigError, DltrainError

SPLITS = ("train", "val")
DEFAULT_COUNT = 32
MAX_COUNT = 1024  # a 32×32 grid, about 5,000 pixels square: more would not be looked at
PICTURE_SUFFIXES = (".png", ".svg", ".pdf")


def check_options(split: str, count: int, out: str | Path | None = None) -> None:
    """The command's own options, checked before the config is read (exit code 2)."""
    problems = []
    suffix = Path(out).suffix.lower() if out is not None and not Path(out).is_dir() else ""
    if suffix and suffix not in PICTURE_SUFFIXES:
        choices = ", ".join(PICTURE_SUFFIXES)
        problems.append(f"--out {out}: cannot draw a {suffix} file; give {choices} or a folder")
    if split not in SPLITS:
        problems.append(f"--split {split!r}: expected {' or '.join(SPLITS)}")
    if not 1 <= count <= MAX_COUNT:
        problems.append(f"--n {count}: expected 1 to {MAX_COUNT} images")
    if problems:
        raise ConfigError(problems, source="dltrain show")


def picture_path(cfg: Config, split: str, out: str | Path | None) -> Path:
    """Where the picture goes: `out` itself when it names a file (a suffix: .png, .svg or
    .pdf), else batch-<split>.png in the folder `out` (default runs/<name>/show/, beside the
    config's runs). The folder is made if missing."""
    out = Path("runs") / cfg.name / "show" if out is None else Path(out)
    path = out if out.suffix and not out.is_dir() else out / f"batch-{split}.png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or err
        raise DltrainError(f"--out {out}: cannot make the folder {path.parent}: {reason}") from None
    return path


def show_batch(
    cfg: Config,
    split: str = "train",
    count: int = DEFAULT_COUNT,
    out: str | Path | None = None,
    seed: int | None = None,
) -> dict:
    """Draw the first `count` images the model receives from `split` (further batches when one
    is not enough, the whole split at most). `seed`: the training loader's seed, i.e. which
    shuffle and augmentation (default: the config's seed, the draw training starts with).
    Returns the picture's path, the count, the shape and value range the model receives, the
    grid (rows, columns) and the data's notes."""
    import torch

    from dltrain.data import make_loader
    from dltrain.reporting.pictures import plot_images, short_name
    from dltrain.training.runtime import start
    from dltrain.training.session import model_data

    check_options(split, count, out)
    path = picture_path(cfg, split, out)
    device = start(cfg)
    # An image folder's files are read for the batches shown, not all decoded into memory:
    # the batches are the same either way (data.cache changes where pixels wait, not which).
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache": "off"})})
    data, splits = model_data(cfg, device)
    seed = cfg.seed if seed is None else seed
    batches = make_loader(splits, split, data, device, seed=seed)
    images, captions = _take(cfg, batches, split, count, seed, splits.info.class_names)
    if not captions:
        raise DltrainError(f"the {split} split of {cfg.data.dataset} holds no images")
    images = torch.cat(images)
    info = splits.info
    title = f"{cfg.name}: {split} images as the model receives them (un-normalized to show)"
    picture = info.unnormalize(images)
    path, grid = plot_images(picture, [short_name(c, 20) for c in captions], title, path)
    return {
        "path": str(path),
        "split": split,
        "images": len(images),
        "shape": list(images.shape[1:]),
        "range": [images.min().item(), images.max().item()],
        "normalized": any(m != 0 for m in info.mean) or any(s != 1 for s in info.std),
        "grid": grid,
        "notes": list(splits.notes),
    }


def _take(cfg: Config, batches, split: str, count: int, seed: int, names: list[str]):
    """Up to `count` images from the loader (float, on the CPU) and their captions: the class
    name; a mixed image's two classes and its own class's share."""
    from dltrain.data import Mixup
    from dltrain.training.session import mixes

    mix = Mixup(cfg.data.mixup, seed) if split == "train" and mixes(cfg) else None
    images, captions = [], []
    for step, (batch, labels) in enumerate(batches, start=1):
        partners, share = labels, 1.0
        if mix is not None:  # as train_one_epoch mixes the first epoch's batches
            batch, partners, share = mix(batch, labels, 1, step)
        batch, labels, partners = (
            part[: count - len(captions)] for part in (batch, labels, partners)
        )
        images.append(batch.float().cpu())
        for own, other in zip(labels.tolist(), partners.tolist(), strict=True):
            mixed = f" {share:.2f} + {names[other]}" if share < 1.0 else ""
            captions.append(names[own] + mixed)
        if len(captions) >= count:
            break
    return images, captions
