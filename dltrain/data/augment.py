"""Training augmentation, batch-wise on tensors on the training device, for every dataset
(image folders too: their files become uint8 batches first). It never sees val or test.
Mixup/CutMix of training batches (`Mixup`) and the views of test-time augmentation
(`tta_views`) work on the device, on batches of either path."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dltrain.config import AugmentConfig, MixupConfig


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _on(params: torch.Tensor, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Move a few CPU-drawn numbers to the batch's device without waiting for it: a plain
    `.to(cuda)` synchronizes the stream (the GPU's queue drains every step); non_blocking
    from pageable memory is staged by the driver before it returns, so it is safe."""
    return params.to(x.device, dtype, non_blocking=True)


class BatchAugment:
    """Augments a float batch (N, C, H, W) of [0, 1] pixels with per-sample random parameters,
    drawn on the CPU from the loader's generator (a few numbers per sample), so the augmentation
    is reproducible and resumable; the pixel work happens on the batch's device. Order:
    random_resized_crop, random_crop, rotation, hflip, color_jitter. The batch arrives at the
    training `size`, except with random_resized_crop: that resamples each crop to `size` from
    the batch as stored (an image folder's keeps a margin for it)."""

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator):
        self.cfg = cfg
        self.generator = generator

    def __call__(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        c = self.cfg
        if c.random_resized_crop:
            x = self._resized_crop(x, c.random_resized_crop, size or tuple(x.shape[2:]))
        if c.random_crop:
            x = self._crop(x, c.random_crop)
        if c.rotation:
            x = self._rotate(x, c.rotation)
        if c.hflip:
            flip = _on(torch.rand(len(x), generator=self.generator) < 0.5, x)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if c.color_jitter:
            x = self._jitter(x, c.color_jitter)
        return x

    def _crop(self, x: torch.Tensor, pad: int) -> torch.Tensor:
        """Zero-pad by `pad` and cut each sample back to its size at a random offset."""
        n, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = _on(torch.randint(0, 2 * pad + 1, (2, n), generator=self.generator), x)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)

    def _sample(self, x: torch.Tensor, *theta: torch.Tensor, size=None) -> torch.Tensor:
        """Resample `x` through per-sample 2x3 affine maps, given as six (N,) entries row by row,
        to `size` (default: x's own)."""
        theta = torch.stack(theta, 1).view(-1, 2, 3)
        shape = [*x.shape[:2], *(size or x.shape[2:])]
        grid = F.affine_grid(_on(theta, x, x.dtype), shape, align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _rotate(self, x: torch.Tensor, degrees: float) -> torch.Tensor:
        n, _, h, w = x.shape
        angle = _uniform(n, -degrees, degrees, self.generator) * (math.pi / 180)
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros(n)
        # Rotation in pixel space, written in the grid's normalized coordinates.
        return self._sample(x, cos, -sin * h / w, zero, sin * w / h, cos, zero)

    def _resized_crop(self, x: torch.Tensor, min_scale: float, size: tuple) -> torch.Tensor:
        """Crop a random area (min_scale..1 of the image, aspect 3/4..4/3), resized to `size`."""
        n = len(x)
        area = _uniform(n, min_scale, 1.0, self.generator)
        ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), self.generator).exp()
        width = (area * ratio).sqrt().clamp(max=1.0)
        height = (area / ratio).sqrt().clamp(max=1.0)
        cx = _uniform(n, -1.0, 1.0, self.generator) * (1 - width)
        cy = _uniform(n, -1.0, 1.0, self.generator) * (1 - height)
        zero = torch.zeros(n)
        return self._sample(x, width, zero, cx, zero, height, cy, size=size)

    def _jitter(self, x: torch.Tensor, strength: float) -> torch.Tensor:
        """Brightness, contrast, then saturation (colour images), each a factor in 1 ± strength."""
        n = len(x)

        def factor() -> torch.Tensor:
            return _on(_uniform(n, 1 - strength, 1 + strength, self.generator), x).view(-1, 1, 1, 1)

        x = x * factor()
        mean = _gray(x).mean((1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean
        if x.shape[1] == 3:
            gray = _gray(x)
            x = (x - gray) * factor() + gray
        return x.clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    weights = _on(torch.tensor([0.299, 0.587, 0.114]), x, x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


class Mixup:
    """Mixup (blend) or CutMix (paste a box) of a training batch with itself rolled by one, so
    every image, odd batch sizes included, gets another image of the batch as its partner.
    Draws come from a generator seeded by (run seed, epoch, step): a resumed epoch mixes its
    batches exactly as the first run did. No label smoothing is added (train.label_smoothing
    is the only smoothing)."""

    def __init__(self, cfg: MixupConfig, seed: int):
        self.cfg, self.seed = cfg, seed

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, step: int):
        """(mixed images, the partners' labels, lam: the share of each image's own label)."""
        c = self.cfg
        rng = np.random.default_rng([self.seed, epoch, step])
        if rng.random() >= c.prob:
            return images, labels, 1.0
        cutmix = c.cutmix_alpha > 0 and (c.alpha == 0 or rng.random() < c.switch_prob)
        alpha = c.cutmix_alpha if cutmix else c.alpha
        lam, partners = float(rng.beta(alpha, alpha)), images.roll(1, 0)
        if not cutmix:
            return images.lerp(partners, 1.0 - lam), labels.roll(1, 0), lam
        # A box of about (1 - lam) of the image, centred anywhere, clipped at the edges; lam
        # then becomes the share of the image that is still its own.
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = partners[..., top:bottom, left:right]
        return mixed, labels.roll(1, 0), 1.0 - (bottom - top) * (right - left) / (h * w)


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views test-time augmentation averages the logits over: the batch itself; with "flip"
    also its mirror image; with "flip+shift" also both moved one pixel down-right and one
    up-left (edge pixels repeated), six views in all."""
    if mode == "none":
        return [x]
    views = [x, x.flip(3)]
    if mode == "flip+shift":
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
        views += shifted + [view.flip(3) for view in shifted]
    return views
