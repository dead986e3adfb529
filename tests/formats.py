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
