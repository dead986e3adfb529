"""Every dataset is read through its real loading code from files the tests write."""

import urllib.request

import numpy as np
import pytest
import torch
import torchvision

from dltrain.config import DataConfig
from dltrain.data import build_splits, make_loader
from dltrain.errors import DltrainError
from tests.formats import digits_as_mnist, write_cifar, write_idx, write_pngs

CPU = torch.device("cpu")


@pytest.fixture
def offline(monkeypatch):
    """Make every download fail as it does without a network."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def cifar_checks_pass(monkeypatch):
    # torchvision checks CIFAR files against the md5 of the official archives; self-written
    # files cannot match, so that check alone is skipped. The reading code still runs.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_read_from_idx_files(tmp_path, name, folder):
    train, test = digits_as_mnist(300, 100)
    write_idx(tmp_path, folder, train, test)
    splits = build_splits(DataConfig(dataset=name, root=str(tmp_path), download=False), seed=0)
    assert splits.sizes == {"train": 270, "val": 30, "test": 100}
    assert splits.info.channels == 1 and splits.info.image_size == (28, 28)
    assert len(splits.info.class_names) == 10
    assert splits.train.images.dtype == torch.uint8
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(test[0]))
    assert splits.info.mean == ([0.1307] if name == "mnist" else [0.2860])


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_read_from_pickled_batches(tmp_path, cifar_checks_pass, classes):
    write_cifar(tmp_path, classes, n_train=500, n_test=100)
    name = "cifar10" if classes == 10 else "cifar100"
    cfg = DataConfig(dataset=name, root=str(tmp_path), download=False, val_split=100)
    splits = build_splits(cfg, seed=0)
    assert splits.sizes == {"train": 400, "val": 100, "test": 100}
    assert splits.info.channels == 3 and splits.info.image_size == (32, 32)
    names = splits.info.class_names  # read from the meta file
    assert len(names) == classes and names[:2] == (
        ["airplane", "automobile"] if classes == 10 else ["apple", "aquarium_fish"]
    )
    assert len(splits.info.mean) == 3


@pytest.mark.parametrize("download", [True, False])
def test_missing_dataset_offline_is_one_line_and_leaves_nothing(tmp_path, offline, download):
    cfg = DataConfig(dataset="mnist", root=str(tmp_path / "data"), download=download)
    with pytest.raises(DltrainError) as caught:
        build_splits(cfg, seed=0)
    message = str(caught.value)
    assert "\n" not in message
    assert f"mnist: dataset not found in {tmp_path}/data/MNIST/raw" in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert ("download failed" in message) == download
    assert "--set data.root=DIR" in message
    assert ("--set data.download=true" in message) != download
    assert not (tmp_path / "data").exists()  # the folders the attempt made went too


def test_failed_download_removes_only_the_folders_it_made(tmp_path, offline):
    """Of data.root a/b/c, with a/ there before: b/ and all below it go, a/ and what it held
    stay; a root that existed stays with its files."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("mine")
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path / "a" / "b" / "c"), download=True)
    with pytest.raises(DltrainError, match="download failed"):
        build_splits(cfg, seed=0)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.txt"]
    (tmp_path / "data" / "MNIST").mkdir(parents=True)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path / "data"), download=True)
    with pytest.raises(DltrainError, match="download failed"):
        build_splits(cfg, seed=0)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["MNIST"]
    assert list((tmp_path / "data" / "MNIST").iterdir()) == []


def test_failed_download_removes_partial_files(tmp_path, monkeypatch):
    """A download that dies halfway leaves no file a later run could take for data."""

    def partial(url, fpath, *args, **kwargs):
        with open(fpath, "wb") as handle:
            handle.write(b"\x1f\x8b partial")
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", partial)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), download=True)
    with pytest.raises(DltrainError, match="download failed"):
        build_splits(cfg, seed=0)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_damaged_files_are_named(tmp_path):
    train, test = digits_as_mnist(50, 20)
    raw = write_idx(tmp_path, "MNIST", train, test)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DltrainError, match="could not read the files in .*MNIST/raw"):
        build_splits(DataConfig(dataset="mnist", root=str(tmp_path), download=False), seed=0)


def test_fast_path_equals_torchvision_pil_path(tmp_path):
    """Batch-wise conversion gives the same tensors as ToTensor + Normalize per sample."""
    from torchvision import transforms as T

    train, test = digits_as_mnist(100, 40)
    write_idx(tmp_path, "MNIST", train, test)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), download=False, eval_batch_size=16)
    ours = torch.cat([x for x, _ in make_loader(build_splits(cfg, 0), "test", cfg, CPU)])
    pil = torchvision.datasets.MNIST(
        str(tmp_path),
        train=False,
        transform=T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]),
    )
    reference = torch.stack([pil[i][0] for i in range(len(pil))])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_fake_dataset_shape_is_configurable():
    cfg = DataConfig(
        dataset="fake",
        fake={"train_size": 40, "test_size": 8, "classes": 4, "channels": 1, "image_size": 16},
    )
    splits = build_splits(cfg, seed=0)
    assert splits.sizes == {"train": 36, "val": 4, "test": 8}
    assert splits.train.images.shape[1:] == (1, 16, 16)
    assert splits.info.num_classes == 4


def test_gray_to_rgb_and_resize_batchwise():
    cfg = DataConfig(dataset="digits", resize=32)
    splits = build_splits(cfg, seed=0, rgb=True)
    assert splits.info.channels == 3 and splits.info.image_size == (32, 32)
    assert splits.info.mean == [0.3053] * 3
    images, _ = next(iter(make_loader(splits, "val", cfg, CPU)))
    assert images.shape[1:] == (3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 2])


def test_normalize_choices():
    plain = build_splits(DataConfig(normalize="none"), seed=0)
    images, _ = next(iter(make_loader(plain, "val", DataConfig(), CPU)))
    assert images.min() >= 0 and images.max() <= 1
    custom = build_splits(DataConfig(normalize={"mean": [0.5], "std": [0.5]}), seed=0)
    assert custom.info.mean == [0.5]
    with pytest.raises(DltrainError, match="1 mean value.*3 channel"):
        build_splits(DataConfig(normalize={"mean": [0.5], "std": [0.5]}), seed=0, rgb=True)


AUGMENTS = [
    {"random_crop": 2},
    {"hflip": True},
    {"rotation": 15},
    {"color_jitter": 0.4},
    {"random_resized_crop": 0.5},
    {"random_crop": 2, "hflip": True, "rotation": 10, "color_jitter": 0.2},
]


@pytest.mark.parametrize("augment", AUGMENTS)
def test_augmentation_changes_train_batches_only(tmp_path, cifar_checks_pass, augment):
    write_cifar(tmp_path, 10, n_train=200, n_test=50)
    base = DataConfig(dataset="cifar10", root=str(tmp_path), download=False, batch_size=64)
    augmented = base.model_copy(update={"augment": base.augment.model_copy(update=augment)})
    splits = build_splits(augmented, seed=0)

    def first(cfg, name):
        return next(iter(make_loader(splits, name, cfg, CPU, seed=1)))[0]

    plain_train, aug_train = first(base, "train"), first(augmented, "train")
    assert aug_train.shape == plain_train.shape
    assert not torch.equal(aug_train, plain_train)
    assert torch.isfinite(aug_train).all()
    for name in ("val", "test"):
        assert torch.equal(first(augmented, name), first(base, name))
    # Same seed, same augmentation: reproducible.
    assert torch.equal(first(augmented, "train"), aug_train)


def test_random_crop_shifts_content():
    from dltrain.config import AugmentConfig
    from dltrain.data.augment import BatchAugment

    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(50, 1, 1, 1)
    out = BatchAugment(AugmentConfig(random_crop=1), torch.Generator().manual_seed(0))(x)
    # Every output is a 4x4 window of the zero-padded 6x6 image.
    padded = torch.nn.functional.pad(x[0], (1, 1, 1, 1))
    windows = {
        padded[0, i : i + 4, j : j + 4].numpy().tobytes() for i in range(3) for j in range(3)
    }
    assert {o[0].numpy().tobytes() for o in out} <= windows
    assert len({o[0].numpy().tobytes() for o in out}) > 3


# --- image folders -------------------------------------------------------------------------


def test_imagefolder_flat_layout_splits_val_and_test(tmp_path):
    write_pngs(tmp_path / "pets", {"cat": 20, "dog": 20})
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(tmp_path / "pets"),
        val_split=0.25,
        test_split=0.2,
        num_workers=0,
        batch_size=8,
    )
    splits = build_splits(cfg, seed=0)
    assert splits.info.class_names == ["cat", "dog"]
    assert splits.sizes == {"train": 24, "val": 8, "test": 8}
    files = [s for split in (splits.train, splits.val, splits.test) for s, _ in split.samples]
    assert len(set(files)) == 40
    images, labels = next(iter(make_loader(splits, "train", cfg, CPU)))
    assert images.shape == (8, 3, 12, 12) and labels.dtype == torch.long


def test_imagefolder_train_val_test_folders_are_used(tmp_path):
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        write_pngs(tmp_path / split, {"a": n, "b": n})
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), num_workers=0)
    splits = build_splits(cfg, seed=0)
    assert splits.sizes == {"train": 12, "val": 6, "test": 4}
    assert all("/val/" in path for path, _ in splits.val.samples)


def test_imagefolder_corrupt_file_is_named_or_skipped(tmp_path):
    write_pngs(tmp_path, {"a": 10, "b": 10})
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), num_workers=0)
    with pytest.raises(DltrainError, match=r"notes.txt is not a readable image.*skip_bad_files"):
        build_splits(cfg, seed=0)
    splits = build_splits(cfg.model_copy(update={"skip_bad_files": True}), seed=0)
    assert sum(splits.sizes.values()) == 20
    assert any("broken.png" in note for note in splits.notes)


def test_imagefolder_mixed_sizes_need_resize(tmp_path):
    write_pngs(tmp_path, {"a": 6}, size=(12, 12))
    write_pngs(tmp_path, {"b": 6}, size=(16, 10))
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), num_workers=0)
    with pytest.raises(DltrainError, match="differ in size.*set data.resize"):
        build_splits(cfg, seed=0)
    resized = cfg.model_copy(update={"resize": 8})
    images, _ = next(iter(make_loader(build_splits(resized, 0), "val", resized, CPU)))
    assert images.shape[1:] == (3, 8, 8)


def test_imagefolder_pil_path_matches_fast_normalization(tmp_path):
    write_pngs(tmp_path, {"a": 5, "b": 5})
    cfg = DataConfig(
        dataset="imagefolder", root=str(tmp_path), num_workers=0, val_split=4, test_split=2
    )
    splits = build_splits(cfg, seed=0)
    images, _ = next(iter(make_loader(splits, "val", cfg, CPU)))
    from PIL import Image

    first = np.asarray(Image.open(splits.val.samples[0][0]).convert("RGB"), dtype=np.float32)
    expected = (
        torch.from_numpy(first).permute(2, 0, 1) / 255
        - torch.tensor(splits.info.mean).view(3, 1, 1)
    ) / torch.tensor(splits.info.std).view(3, 1, 1)
    torch.testing.assert_close(images[0], expected)


def test_imagefolder_missing_folder(tmp_path):
    with pytest.raises(DltrainError, match="imagefolder: .*nope folder not found"):
        build_splits(DataConfig(dataset="imagefolder", root=str(tmp_path / "nope")), seed=0)


def test_imagefolder_with_worker_processes_matches_in_process_loading(tmp_path):
    write_pngs(tmp_path, {"a": 6, "b": 6})
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(tmp_path),
        num_workers=0,
        batch_size=4,
        val_split=2,
        test_split=2,
        cache="off",
    )
    splits = build_splits(cfg, seed=0)
    workers = cfg.model_copy(update={"num_workers": 2})
    loader = make_loader(splits, "train", workers, CPU, seed=3)
    assert loader.loader.persistent_workers and not loader.loader.pin_memory
    first = [y.tolist() for _, y in loader]
    again = [y.tolist() for _, y in make_loader(splits, "train", cfg, CPU, seed=3)]
    assert first == again  # same seeded order with or without workers
