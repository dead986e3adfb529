"""Training augmentation: batch-wise on tensors for the in-memory path, torchvision transforms
for image folders. Both take the same `data.augment` config; neither ever sees val or test."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dltrain.config import AugmentConfig


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _on(params: torch.Tensor, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Move a few CPU-drawn numbers to the batch's device without waiting for it: a plain
    `.to(cuda)` synchronizes the stream (the GPU's queue drains every step); non_blocking
    from pageable memory is staged by the driver before it returns, so it is safe."""
    return params.to(x.device, dtype, non_blocking=True)


class BatchAugment:
    """Augments a float batch (N, C, H, W) of [0, 1] pixels with per-sample random parameters.

    Parameters are drawn on the CPU from the loader's generator (a few numbers per sample), so
    the augmentation is reproducible and resumable; the pixel work happens on the batch's
    device. Order: random_resized_crop, random_crop, rotation, hflip, color_jitter.
    """

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator):
        self.cfg = cfg
        self.generator = generator

    @property
    def enabled(self) -> bool:
        c = self.cfg
        return bool(
            c.random_crop or c.hflip or c.rotation or c.color_jitter or c.random_resized_crop
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.random_resized_crop:
            x = self._resized_crop(x, c.random_resized_crop)
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
        dy = _on(torch.randint(0, 2 * pad + 1, (n,), generator=self.generator), x)
        dx = _on(torch.randint(0, 2 * pad + 1, (n,), generator=self.generator), x)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)

    def _sample(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(_on(theta, x, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _rotate(self, x: torch.Tensor, degrees: float) -> torch.Tensor:
        n, _, h, w = x.shape
        angle = _uniform(n, -degrees, degrees, self.generator) * (math.pi / 180)
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros(n)
        # Rotation in pixel space, written in the grid's normalized coordinates.
        theta = torch.stack(
            [torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1
        )
        return self._sample(x, theta)

    def _resized_crop(self, x: torch.Tensor, min_scale: float) -> torch.Tensor:
        """Crop a random area (min_scale..1 of the image, aspect 3/4..4/3) and resize it back."""
        n = len(x)
        area = _uniform(n, min_scale, 1.0, self.generator)
        log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), self.generator)
        ratio = log_ratio.exp()
        width = (area * ratio).sqrt().clamp(max=1.0)
        height = (area / ratio).sqrt().clamp(max=1.0)
        cx = _uniform(n, -1.0, 1.0, self.generator) * (1 - width)
        cy = _uniform(n, -1.0, 1.0, self.generator) * (1 - height)
        zero = torch.zeros(n)
        theta = torch.stack(
            [torch.stack([width, zero, cx], 1), torch.stack([zero, height, cy], 1)], 1
        )
        return self._sample(x, theta)

    def _jitter(self, x: torch.Tensor, strength: float) -> torch.Tensor:
        """Brightness, contrast, then saturation (colour images), each a factor in 1 ± strength."""
        n = len(x)

        def factor() -> torch.Tensor:
            return _on(_uniform(n, 1 - strength, 1 + strength, self.generator), x).view(-1, 1, 1, 1)

        x = x * factor()
        gray = _gray(x)
        x = (x - gray.mean((1, 2, 3), keepdim=True)) * factor() + gray.mean((1, 2, 3), keepdim=True)
        if x.shape[1] == 3:
            gray = _gray(x)
            x = (x - gray) * factor() + gray
        return x.clamp(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    weights = _on(torch.tensor([0.299, 0.587, 0.114]), x, x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def pil_transforms(cfg: AugmentConfig, size: tuple[int, int]) -> list:
    """The same augmentations as torchvision transforms, for the image-folder path."""
    from torchvision import transforms as T

    steps = []
    if cfg.random_resized_crop:
        steps.append(T.RandomResizedCrop(size, scale=(cfg.random_resized_crop, 1.0)))
    if cfg.random_crop:
        steps.append(T.RandomCrop(size, padding=cfg.random_crop))
    if cfg.rotation:
        steps.append(T.RandomRotation(cfg.rotation))
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    if cfg.color_jitter:
        s = cfg.color_jitter
        steps.append(T.ColorJitter(brightness=s, contrast=s, saturation=s))
    return steps
