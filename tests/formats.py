"""Writers of small datasets in the real on-disk formats that torchvision reads."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def digits_as_mnist(n_train: int = 1200, n_test: int = 300):
    """scikit-learn's real digits, upscaled to 28x28 uint8 like MNIST: (images, labels) pairs."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0
    x = F.pad(F.interpolate(x, size=(20, 20), mode="bilinear"), (4, 4, 4, 4))
    images = (x.squeeze(1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    labels = bunch.target.astype(np.uint8)
    return (images[:n_train], labels[:n_train]), (
        images[n_train : n_train + n_test],
        labels[n_train : n_train + n_test],
    )


def write_idx(root: Path, folder: str, train, test, gz: bool = False) -> Path:
    """Write IDX files (the MNIST format) for torchvision class `folder` (MNIST, FashionMNIST)."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        n, h, w = images.shape
        blobs = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, h, w) + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
    return raw


def write_cifar(root: Path, classes: int, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write CIFAR-10 (classes=10) or CIFAR-100 (classes=100) pickled batches, with the real
    class names in the meta file."""
    from dltrain.data.datasets import CIFAR10_CLASSES, CIFAR100_CLASSES

    rng = np.random.default_rng(seed)
    ten = classes == 10
    folder = Path(root) / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    key = "labels" if ten else "fine_labels"

    def batch(n):
        labels = rng.integers(0, classes, n)
        # Each class gets its own mean colour, so the images are learnable.
        base = (labels[:, None] * 37 % 256).astype(np.uint8)
        data = np.clip(base + rng.integers(0, 40, (n, 3072)), 0, 255).astype(np.uint8)
        return {"data": data, key: labels.tolist()}

    if ten:
        per = -(-n_train // 5)
        for i in range(5):
            dump(folder / f"data_batch_{i + 1}", batch(min(per, n_train - i * per)))
        dump(folder / "test_batch", batch(n_test))
        dump(folder / "batches.meta", {"label_names": CIFAR10_CLASSES})
    else:
        dump(folder / "train", batch(n_train))
        dump(folder / "test", batch(n_test))
        dump(folder / "meta", {"fine_label_names": CIFAR100_CLASSES})
    return folder


def dump(path: Path, obj) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def write_pngs(folder: Path, per_class: dict[str, int], size=(12, 12), seed: int = 0) -> None:
    """<folder>/<class>/<i>.png, each class a distinct colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(per_class.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        colour = np.array([(index * 90) % 256, (index * 150) % 256, (index * 40 + 60) % 256])
        for i in range(count):
            pixels = np.clip(colour + rng.integers(-20, 20, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def jittered_digits(
    n: int, part: str, seed: int, size: int = 28, colour: bool = False, mirror: bool = False
):
    """`n` images of scikit-learn's real handwritten digits at `size` px, as a dataset of any
    size: each a digit of one fixed part of the 1,797 ("train": 1,497 of them, "test": the
    other 300, so test digits are never seen in training), scaled to 13-19 px, rotated by up
    to ±12°, shifted by up to ±3 px and given pixel noise. `colour`: (n, size, size, 3) with
    a random colour for the background and one for the digit that differs from it by 0.35 to
    0.65 in every channel, else (n, size, size);
    `mirror`: half of them mirrored, so the class does not change under a mirror (as for
    clothes). Returns (uint8 images, uint8 labels)."""
    import math

    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(20240613).permutation(len(bunch.target))
    pool = order[:1497] if part == "train" else order[1497:]
    rng = torch.Generator().manual_seed(seed)
    picks = torch.from_numpy(pool)[torch.randint(len(pool), (n,), generator=rng)]
    digits = torch.from_numpy(bunch.images).float()[picks].unsqueeze(1) / 16.0
    scale = (13 + 6 * torch.rand(n, generator=rng)) / size  # digit height / image height
    angle = (torch.rand(n, generator=rng) * 2 - 1) * math.radians(12)
    shift = (torch.rand(n, 2, generator=rng) * 2 - 1) * 3 * 2 / size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # fmt: skip
    if mirror:
        flip = torch.rand(n, generator=rng) < 0.5
        theta[flip, 0, :2] *= -1
    images = []
    for start in range(0, n, 4096):  # a batch at a time: 60,000 images fit in little memory
        part_theta = theta[start : start + 4096]
        grid = F.affine_grid(part_theta, (len(part_theta), 1, size, size), align_corners=False)
        images.append(F.grid_sample(digits[start : start + 4096], grid, align_corners=False))
    ink = torch.cat(images).clamp(0, 1)
    ink = (ink + 0.08 * torch.randn(ink.shape, generator=rng)).clamp(0, 1)
    if colour:  # every channel of the digit at least 0.35 off the background's
        back = torch.rand(n, 3, 1, 1, generator=rng)
        delta = 0.35 + 0.3 * torch.rand(n, 3, 1, 1, generator=rng)
        fore = torch.where(back > 0.5, back - delta, back + delta).clamp(0, 1)
        pixels = (back + (fore - back) * ink).permute(0, 2, 3, 1)
    else:
        pixels = ink.squeeze(1)
    labels = torch.from_numpy(bunch.target)[picks].to(torch.uint8)
    return (pixels * 255).round().to(torch.uint8).numpy(), labels.numpy()


def write_cifar_images(root: Path, train, test) -> Path:
    """CIFAR-10 batches (cifar-10-batches-py) holding the given (N, 32, 32, 3) uint8 images
    and labels: `train` and `test` are (images, labels) pairs."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(images, labels):
        data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR: planes, row-major
        return {"data": np.ascontiguousarray(data), "labels": [int(x) for x in labels]}

    images, labels = train
    per = -(-len(labels) // 5)
    for i in range(5):
        part = slice(i * per, (i + 1) * per)
        dump(folder / f"data_batch_{i + 1}", batch(images[part], labels[part]))
    dump(folder / "test_batch", batch(*test))
    dump(folder / "batches.meta", {"label_names": [str(i) for i in range(10)]})
    return folder
