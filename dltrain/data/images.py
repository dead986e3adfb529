"""Image files -> uint8 tensors of one shape: how an image folder, its in-memory cache and
`dltrain predict` all read a picture, so that the three see the same pixels.

`data.resize_mode` says how a picture of another aspect becomes a square of `data.resize`:
crop (the default, as torchvision's and timm's references evaluate: the shorter side to the
size, the centre cut out), squash (stretched, the aspect lost) or pad (letterbox: the longer
side to the size, black bars on the short one).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

# Random resized crop trains on crops of the image: the cache keeps it at 1/0.875 of the
# training size (timm's default crop_pct), so a crop of most of it is cut from pixels, not
# upsampled.
CROP_MARGIN = 1 / 0.875
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class Look(NamedTuple):
    """What a file becomes: `size`x`size` (None: as it is), by `mode`, with `channels`."""

    size: int | None
    mode: str
    channels: int


def margin_size(size: int) -> int:
    return math.ceil(size * CROP_MARGIN)


def _draft(image, look: Look) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when the target is that much smaller: the
    decoder then skips most of the work (PIL keeps the result at least the requested size)."""
    if image.format != "JPEG" or look.size is None:
        return
    w, h = image.size
    side = min(w, h) if look.mode == "crop" else max(w, h) if look.mode == "pad" else None
    if side is None:  # squash: both sides must stay at least the size
        request = (look.size, look.size)
    else:
        request = (math.ceil(w * look.size / side), math.ceil(h * look.size / side))
    image.draft("L" if look.channels == 1 else "RGB", request)


def fit(image, look: Look):
    """A PIL image in `look`'s channels, size and resize mode."""
    from PIL import Image

    image = image.convert("L" if look.channels == 1 else "RGB")
    if look.size is None:
        return image
    image, size = square(image, look.mode), look.size
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)  # antialiased when shrinking
    return image


def square(image, mode: str):
    """A square of a PIL image by data.resize_mode: its centre (crop), itself (squash: the
    resize stretches it) or itself on black bars (pad)."""
    from PIL import Image

    w, h = image.size
    if mode == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return image.crop((left, top, left + side, top + side))
    if mode == "pad" and w != h:
        side = max(w, h)
        padded = Image.new(image.mode, (side, side))
        padded.paste(image, ((side - w) // 2, (side - h) // 2))
        return padded
    return image


def read(path: str, look: Look) -> torch.Tensor:
    """One file -> uint8 (C, H, W) as `look` says."""
    from PIL import Image

    with Image.open(path) as image:
        _draft(image, look)
        image = fit(image, look)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


def is_gray(mode: str) -> bool:
    return mode in GRAY_MODES
