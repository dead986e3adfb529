"""The `data` section: which dataset, how it is split, read, resized, augmented and mixed."""

from typing import Literal

from pydantic import Field, field_validator

from dltrain.config.section import NormalizeStats, Section, _nested
from dltrain.registry import DATASETS


class AugmentConfig(Section):
    random_crop: int = Field(0, ge=0, description="Pad by this many pixels, crop back; 0 = off.")
    hflip: bool = Field(False, description="Flip horizontally with probability 0.5.")
    rotation: float = Field(0.0, ge=0, le=180, description="Rotate by up to ± this many degrees.")
    color_jitter: float = Field(
        0.0, ge=0, le=1, description="Brightness, contrast and saturation jitter; 0 = off."
    )
    random_resized_crop: float = Field(
        0.0, ge=0, lt=1, description="Crop 'scale' lower bound (e.g. 0.08), resize back; 0 = off."
    )


class FakeDataConfig(Section):
    train_size: int = Field(256, ge=2, description="fake: number of training images.")
    test_size: int = Field(64, ge=1, description="fake: number of test images.")
    classes: int = Field(10, ge=2, description="fake: number of classes.")
    channels: Literal[1, 3] = Field(3, description="fake: image channels.")
    image_size: int = Field(32, ge=4, description="fake: image height and width.")


class MixupConfig(Section):
    alpha: float = Field(
        0.0,
        ge=0,
        description="Mixup: blend with another image, weight ~ Beta(alpha, alpha) "
        "(0.2 is usual); 0 = off.",
    )
    cutmix_alpha: float = Field(
        0.0,
        ge=0,
        description="CutMix: paste a box of another image, area share ~ Beta(a, a) "
        "(1.0 is usual); 0 = off.",
    )
    prob: float = Field(1.0, ge=0, le=1, description="Share of training batches that are mixed.")
    switch_prob: float = Field(
        0.5, ge=0, le=1, description="With both on: share of mixed batches that use CutMix."
    )


class DataConfig(Section):
    dataset: Literal[DATASETS.choices] = Field("digits", description="Dataset to train on.")
    root: str = Field(
        "data", description="Where datasets are stored or downloaded to (imagefolder: the folder)."
    )
    download: bool = Field(True, description="Download the dataset if its files are missing.")
    val_split: float = Field(
        0.1,
        description="Validation set carved out of the training data: a fraction (0-1) or a count.",
    )
    split_seed: int | None = Field(
        None, description="Seed of the validation split; null = the run's seed."
    )
    test_split: float = Field(
        0.1, description="imagefolder without test/: test set split off, a fraction or a count."
    )
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    eval_batch_size: int | None = Field(
        None, ge=1, description="Batch size for validation and test; null = twice batch_size."
    )
    normalize: Literal["auto", "dataset", "none"] | NormalizeStats = Field(
        "auto",
        description="auto (with model.pretrained: imagenet, the weights' mean/std; else the "
        "dataset's), dataset (its own mean/std), none, or {mean: [...], std: [...]}.",
    )
    augment: AugmentConfig = _nested(AugmentConfig, "Training-split augmentation (never val/test).")
    resize: int | None = Field(
        None,
        ge=4,
        description="Resize images to this square size (e.g. 224); null = keep (with "
        "model.pretrained: imagenet on a torchvision or timm model: the weights' size).",
    )
    resize_mode: Literal["crop", "squash", "pad"] = Field(
        "crop",
        description="How data.resize makes a square of an image of another shape: crop (shorter "
        "side to the size, the centre cut out), squash (stretched) or pad (letterbox).",
    )
    cache: Literal["auto", "ram", "off"] = Field(
        "auto",
        description="imagefolder: ram = decode every image once into memory; off = read the "
        "files every epoch; auto = ram when the decoded images take at most a quarter of the "
        "memory available (on a GPU, of its free memory), else off. With "
        "augment.random_resized_crop, training images are kept at data.resize / 0.875 "
        "(timm's crop_pct) for the crops.",
    )
    num_workers: int = Field(
        2, ge=0, description="imagefolder without the cache: DataLoader worker processes."
    )
    skip_bad_files: bool = Field(
        False, description="imagefolder: skip unreadable images with a warning instead of failing."
    )
    fake: FakeDataConfig = _nested(FakeDataConfig, "Shape of the `fake` smoke-test dataset.")
    mixup: MixupConfig = _nested(
        MixupConfig, "Mixup/CutMix of training batches, on the device after augmentation."
    )
    sampler: Literal["random", "balanced"] = Field(
        "random",
        description="random: each training sample once per epoch; balanced: drawn with "
        "replacement so each class comes equally often (seeded).",
    )

    def split_seed_for(self, seed: int) -> int:
        """The seed that draws the validation split: data.split_seed, else the run's."""
        return seed if self.split_seed is None else self.split_seed

    @field_validator("cache", mode="before")
    def _yaml_off(cls, value):
        # YAML reads a bare off (and no, false) as False, on/yes/true as True.
        return {False: "off", True: "ram"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("val_split", "test_split")
    def _fraction_or_count(cls, value: float) -> float:
        if value <= 0 or (value >= 1 and not float(value).is_integer()):
            raise ValueError("a fraction between 0 and 1, or a whole count >= 1")
        return int(value) if value >= 1 else value


def image_size(data: DataConfig) -> int | None:
    """The image size known without reading data (imagefolder: only through data.resize)."""
    sizes = {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}
    return data.resize or {**sizes, "fake": data.fake.image_size}.get(data.dataset)
