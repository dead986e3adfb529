"""Image folders as first-class data: decoded once into memory (data.cache) with the same
batches as read from the files, resized keeping their shape (data.resize_mode), gray folders
kept at one channel, and a class histogram with a note for imbalance."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from dltrain.cli import app
from dltrain.config import AugmentConfig, DataConfig
from dltrain.data import build_splits, images, make_loader
from dltrain.errors import DltrainError
from tests.alike import assert_same_run
from tests.formats import write_pngs

CPU = torch.device("cpu")


def write_config(path, config: dict):
    path.write_text(yaml.safe_dump(config))
    return path


def pets(tmp_path, per_class: dict, size, **data):
    """A folder of pets and a tiny MLP config that trains on it for one epoch."""
    write_pngs(tmp_path / "pets", per_class, size=size)
    config = {
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "pets"), **data},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 1},
    }
    return write_config(tmp_path / "pets.yaml", config)


def train(*args: str):
    return CliRunner().invoke(app, ["train", *map(str, args)])


def folder_cfg(root, **update) -> DataConfig:
    base = dict(dataset="imagefolder", root=str(root), num_workers=0, batch_size=8)
    return DataConfig(**{**base, **update})


def batches(cfg: DataConfig, name: str, seed: int = 3) -> list:
    splits = build_splits(cfg, seed=0)
    return [(x.clone(), y.clone()) for x, y in make_loader(splits, name, cfg, CPU, seed=seed)]


@pytest.mark.parametrize(
    "augment",
    [{}, {"hflip": True, "random_resized_crop": 0.3, "color_jitter": 0.4, "rotation": 10}],
    ids=["plain", "augmented"],
)
def test_a_cached_folder_gives_the_same_batches_as_its_files(tmp_path, augment):
    write_pngs(tmp_path, {"a": 9, "b": 9, "c": 9}, size=(20, 14))
    cfg = folder_cfg(tmp_path, resize=12, augment=augment, val_split=6, test_split=3)
    for name in ("train", "val", "test"):
        ram = batches(cfg.model_copy(update={"cache": "ram"}), name)
        off = batches(cfg.model_copy(update={"cache": "off", "num_workers": 2}), name)
        assert len(ram) == len(off) > 0
        for (xr, yr), (xo, yo) in zip(ram, off, strict=True):
            assert torch.equal(yr, yo), name
            torch.testing.assert_close(xr, xo, atol=1e-5, rtol=0)
    if augment:  # same order, other pixels: the augmentation is on, in both
        train = batches(cfg.model_copy(update={"cache": "ram"}), "train")
        plain = batches(cfg.model_copy(update={"augment": AugmentConfig()}), "train")
        assert all(torch.equal(y, yp) for (_, y), (_, yp) in zip(train, plain, strict=True))
        assert not torch.allclose(train[0][0], plain[0][0], atol=0.1)


def test_a_training_run_is_the_same_from_memory_and_from_the_files(tmp_path):
    write_pngs(tmp_path / "pets", {"cat": 16, "dog": 16}, size=(16, 12))
    runs = {}
    for cache in ("ram", "off"):
        config = write_config(
            tmp_path / f"{cache}.yaml",
            {
                "name": cache,
                "seed": 1,
                "data": {
                    "dataset": "imagefolder",
                    "root": str(tmp_path / "pets"),
                    "resize": 12,
                    "cache": cache,
                    "batch_size": 8,
                    "augment": {"hflip": True, "random_resized_crop": 0.5},
                },
                "model": {"name": "cnn", "channels": [4, 8]},
                "train": {"epochs": 2, "deterministic": True},
                "checkpoint": {"interval": 0},
            },
        )
        runs[cache] = tmp_path / "runs" / cache
        result = train(config, "--out", runs[cache])
        assert result.exit_code == 0, result.output
    assert_same_run(runs["ram"], runs["off"])


def landscape(path, size=(500, 375)):
    """A 500x375 picture: its centre square red, the strips left and right of it blue."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, :, 2] = 255
    left = (w - h) // 2
    pixels[:, left : left + h] = (255, 0, 0)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("mode", ["crop", "squash", "pad"])
def test_resize_modes_on_a_500x375_picture(tmp_path, mode):
    x = images.read(str(landscape(tmp_path / "p.png")), images.Look(60, mode, 3)).float()
    assert x.shape == (3, 60, 60)
    red, blue = x[0] > 200, x[2] > 200
    if mode == "crop":  # the centre 375x375: all red
        assert red.all() and not blue.any()
    elif mode == "squash":  # all of it, stretched: blue strips of 62.5/500 of the width
        assert blue[:, :6].all() and blue[:, -6:].all() and red[:, 10:50].all()
        assert red.all(0).sum() == pytest.approx(60 * 375 / 500, abs=2)
    else:  # letterbox: 500 wide, 375/500 of the height, black bars above and below
        bars = x.sum(0) < 30
        assert bars[:6].all() and bars[-6:].all()
        assert (~bars).all(1).sum() == pytest.approx(60 * 375 / 500, abs=2)
        assert blue[30, :5].all() and red[30, 20:40].all()


def test_a_large_jpeg_decodes_in_draft_mode_to_nearly_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    big = Image.fromarray(smooth).resize((1600, 1200), Image.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=92)
    look = images.Look(64, "crop", 3)
    fast = images.read(str(tmp_path / "big.jpg"), look).float()
    with Image.open(tmp_path / "big.jpg") as image:  # the full decode, no draft
        full = images.fit(image, look)
    full = torch.from_numpy(np.array(full)).permute(2, 0, 1).float()
    assert fast.shape == full.shape == (3, 64, 64)
    assert (fast - full).abs().mean() < 3  # of 255


def test_a_gray_folder_stays_one_channel(tmp_path):
    for name, value in (("dark", 40), ("light", 200)):
        (tmp_path / name).mkdir()
        for i in range(8):
            pixels = np.full((10, 10), value + i, np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / name / f"{i}.png")
    cfg = folder_cfg(tmp_path, val_split=4, test_split=2)
    splits = build_splits(cfg, seed=0)
    assert splits.info.channels == 1 and len(splits.info.mean) == 1
    x, _ = next(iter(make_loader(splits, "train", cfg, CPU)))
    assert x.shape[1] == 1
    # A model that needs RGB gets the gray channel repeated, batch-wise.
    rgb = build_splits(cfg, seed=0, rgb=True)
    x, _ = next(iter(make_loader(rgb, "val", cfg, CPU)))
    assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 2])


def test_a_folder_that_mixes_modes_is_read_as_rgb_with_a_note(tmp_path):
    write_pngs(tmp_path, {"a": 6, "b": 6}, size=(10, 10))
    Image.fromarray(np.full((10, 10), 99, np.uint8), "L").save(tmp_path / "a" / "gray.png")
    Image.new("RGBA", (10, 10), (1, 2, 3, 4)).save(tmp_path / "b" / "alpha.png")
    splits = build_splits(folder_cfg(tmp_path, val_split=2, test_split=2), seed=0)
    assert splits.info.channels == 3
    assert any(
        "mix PIL modes (L 1, RGB 12, RGBA 1); all are read as RGB" in n for n in splits.notes
    )


def test_cache_off_and_on_read_as_yaml_writes_them():
    from dltrain.config import load_config

    for text, expected in (("off", "off"), ("false", "off"), ("on", "ram"), ("ram", "ram")):
        cfg = load_config("configs/digits_mlp.yaml", [f"data.cache={text}"])
        assert cfg.data.cache == expected


def test_cache_auto_says_what_it_chose(tmp_path, monkeypatch):
    import dltrain.data as data

    write_pngs(tmp_path, {"a": 10, "b": 10}, size=(12, 12))
    cfg = folder_cfg(tmp_path, val_split=4, test_split=4)
    splits = build_splits(cfg, seed=0)
    assert splits.cache
    # 16 images of 3x12x12 bytes: memory, when a quarter of what is available holds them.
    assert any("decoded once into memory (16 images at 3x12x12" in n for n in splits.notes)
    monkeypatch.setattr(data, "_available_memory", lambda device: (4 * 16 * 432 - 4, "available"))
    splits = build_splits(cfg, seed=0)
    assert not splits.cache
    assert any("read from its files every epoch" in n for n in splits.notes)
    assert not build_splits(cfg.model_copy(update={"cache": "off"}), seed=0).cache
    loader = make_loader(splits, "train", cfg, CPU)
    assert hasattr(loader, "loader")  # the files, through a DataLoader


def test_random_resized_crop_trains_from_a_cache_with_a_margin(tmp_path):
    write_pngs(tmp_path, {"a": 6, "b": 6}, size=(40, 30))
    cfg = folder_cfg(tmp_path, resize=16, augment={"random_resized_crop": 0.5}, cache="ram")
    splits = build_splits(cfg.model_copy(update={"val_split": 2, "test_split": 2}), seed=0)
    assert splits.train.look.size == 19 and splits.val.look.size == 16  # ceil(16 / 0.875)
    x, _ = next(iter(make_loader(splits, "train", cfg, CPU)))
    assert x.shape[1:] == (3, 16, 16)
    assert splits.train.decoded.images.shape[1:] == (3, 19, 19)


def test_bad_images_fail_up_front_with_their_name_whatever_the_cache(tmp_path):
    write_pngs(tmp_path, {"a": 6, "b": 6})
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    for cache in ("ram", "off"):
        with pytest.raises(DltrainError, match=r"broken.jpg is not a readable image"):
            build_splits(folder_cfg(tmp_path, cache=cache), seed=0)


def test_the_start_says_the_class_histogram_and_imbalance(tmp_path):
    config = pets(tmp_path, {"cat": 60, "dog": 8}, (8, 8), val_split=0.1)
    result = train(config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    # 68 images: test 7 (6 cat, 1 dog), val 6 (5 cat, 1 dog), train 49 + 6.
    assert "training images per class: cat 49, dog 6" in result.output
    assert "classes are imbalanced (6-49 training images each); consider " in result.output
    assert "train.class_weights: balanced" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["class_counts"] == {"cat": 49, "dog": 6}
    balanced = train(config, "--out", tmp_path / "run2", "--set", "train.class_weights=balanced")
    assert balanced.exit_code == 0 and "imbalanced" not in balanced.output


def test_a_checkpoint_from_before_resize_mode_keeps_squashing(tmp_path):
    from dltrain.training.checkpoint import open_saved

    run = tmp_path / "run"
    config = pets(tmp_path, {"cat": 10, "dog": 10}, (16, 12), resize=8)
    assert train(config, "--out", run).exit_code == 0
    assert open_saved(run / "best.pt").cfg.data.resize_mode == "crop"
    saved = torch.load(run / "best.pt", weights_only=True)
    del saved["config"]["data"]["resize_mode"]  # as a checkpoint of an earlier version
    torch.save(saved, run / "old.pt")
    assert open_saved(run / "old.pt").cfg.data.resize_mode == "squash"
