"""`dltrain predict`: classify image files with a checkpoint, using its own preprocessing: its
`data_info` (channels, size, normalization), its data.resize_mode for an image of another
shape, and the in-memory training path's resize, so an image of the right size gives the
training path's tensor (up to float rounding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from dltrain.data import DataInfo, images
from dltrain.errors import DltrainError
from dltrain.training import checkpoint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
BATCH_SIZE = 256


def predict(
    ckpt_path: str | Path, inputs: list[Path], topk: int = 3, overrides: list[str] = ()
) -> list[dict]:
    """Top-k classes with softmax probabilities for each image: [{"file", "top": [{"class",
    "prob"}, ...]}, ...], in the order of `inputs` (folders expanded, sorted). `overrides`:
    `--set` strings for the checkpoint's config (`--device` is device=…)."""
    if topk < 1:
        raise DltrainError(f"topk must be at least 1 (got {topk})")
    files = expand_inputs(inputs)
    saved = checkpoint.open_saved(ckpt_path, overrides, purpose="predict")
    model, torch_device = saved.model()
    info = saved.info
    results = []
    for start in range(0, len(files), BATCH_SIZE):
        chunk = files[start : start + BATCH_SIZE]
        with torch.inference_mode():
            logits = model(to_batch(chunk, info, torch_device, saved.cfg.data.resize_mode))
            probs, indices = logits.float().softmax(1).topk(min(topk, info.num_classes), dim=1)
        for path, prob_row, index_row in zip(chunk, probs.tolist(), indices.tolist(), strict=True):
            pairs = zip(prob_row, index_row, strict=True)
            top = [{"class": info.class_names[i], "prob": p} for p, i in pairs]
            results.append({"file": str(path), "top": top})
    return results


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders become their image files (recursive, sorted, no hidden ones)."""
    files = []
    for item in map(Path, inputs):
        if item.is_file():
            files.append(item)
        elif item.is_dir():
            found = sorted(
                path
                for path in item.rglob("*")
                if path.is_file()
                and path.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in path.relative_to(item).parts)
            )
            if not found:
                looked = ", ".join(IMAGE_SUFFIXES)
                raise DltrainError(f"{item}: no image files in this folder (looked for {looked})")
            files.extend(found)
        else:
            raise DltrainError(f"{item}: no such file or folder")
    if not files:
        raise DltrainError("no images given: name image files or folders")
    return files


def load_image(path: Path, info: DataInfo, mode: str = "crop") -> torch.Tensor:
    """One file -> float (C, H, W) in [0, 1], with the checkpoint's channels and size; an
    image of another shape made square first by `mode` (data.resize_mode)."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if info.channels == 1 else "RGB")
            h, w = info.image_size
            if h == w:
                image = images.square(image, mode)
    except UnidentifiedImageError:
        raise DltrainError(f"{path} is not an image (PIL cannot identify its format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DltrainError(f"{path} is not an image ({reason})") from None
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    pixels = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    x = pixels.float().mul_(1.0 / 255.0)
    size = tuple(info.image_size)
    if tuple(x.shape[1:]) != size:
        # The same resize as the in-memory training path (dltrain.data.Batches.convert).
        x = F.interpolate(x[None], size, mode="bilinear", antialias=True, align_corners=False)[0]
    return x


def to_batch(
    files: list[Path], info: DataInfo, device: torch.device, mode: str = "crop"
) -> torch.Tensor:
    """Files -> one normalized float batch (N, C, H, W) on `device`."""
    x = torch.stack([load_image(path, info, mode) for path in files]).to(device)
    mean, std = info.stats(device)
    return (x - mean) / std
