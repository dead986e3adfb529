"""The config schema: one pydantic section per part of a run, each field with its default and a
one-line description (`dltrain config reference`, `dltrain config schema`). Extra keys are
forbidden everywhere. Torch-free: `dltrain config show` stays fast."""

from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dltrain.models import facts
from dltrain.registry import DATASETS, OPTIMIZERS

# What each field with a union type takes: its failure is this one line, not one per member.
_UNIONS = {
    "normalize": "auto, dataset, none, or {mean: [...], std: [...]} of equal length",
    "small_input": "true, false or auto",
    "freeze": "all_but_head, none, or a list of module-name prefixes",
    "class_weights": "none, balanced, or a list of weights (one per class, each >= 0)",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator(*_UNIONS, mode="wrap", check_fields=False)
    def _union_in_one_line(cls, value, handler, info: ValidationInfo):
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(_UNIONS[info.field_name]) from None


def _nested(section: type[Section], description: str):
    """The field of a section within a section: by default, all of that section's defaults."""
    return Field(default_factory=section, description=description)


class NormalizeStats(Section):
    mean: list[float] = Field(min_length=1, description="Per-channel mean (of 0-1 pixels).")
    std: list[float] = Field(min_length=1, description="Per-channel standard deviation.")

    @field_validator("std")
    def _positive(cls, std: list[float], info: ValidationInfo) -> list[float]:
        if any(s <= 0 for s in std):
            raise ValueError("positive values")
        if "mean" in info.data and len(info.data["mean"]) != len(std):
            raise ValueError("as many values as mean")
        return std


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


class ModelConfig(Section):
    name: str = Field(
        "mlp",
        description="Model: the course's mlp, cnn, alexnet or resnet18, a torchvision "
        "classifier (mobilenet_v3_small, efficientnet_b0, ...) or timm/<name> (extra: timm); "
        "`dltrain models` lists them.",
    )
    hidden: list[int] = Field(
        [256, 128], description="mlp: sizes of the hidden layers, input to output."
    )
    channels: list[int] = Field(
        [32, 64, 128], description="cnn: output channels of each conv block."
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout probability: mlp/cnn/alexnet, timm's drop_rate, torchvision's "
        "models that have one (not resnet18).",
    )
    batch_norm: bool = Field(False, description="mlp/cnn: batch normalization after each layer.")
    pretrained: str = Field(
        "none",
        description="none, imagenet (the library's default weights, for the models that have "
        "them: dltrain models --pretrained), or the path of a state-dict file.",
    )
    small_input: bool | Literal["auto"] = Field(
        "auto", description="alexnet/resnet18: stem for 28-32 px images; auto = when under 64 px."
    )

    @field_validator("name")
    def _known_model(cls, name: str) -> str:
        if problem := facts.unknown_name(name):
            raise ValueError(problem)
        return name

    @field_validator("hidden", "channels")
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("a list of sizes, each >= 1")
        return sizes


class OptimConfig(Section):
    name: Literal[OPTIMIZERS.choices] = Field("adam", description="Optimizer.")
    lr: float = Field(1e-3, gt=0.0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd/rmsprop: momentum.")
    nesterov: bool = Field(False, description="sgd: use Nesterov momentum.")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (decoupled for adamw).")
    no_decay_bias_norm: bool = Field(
        False, description="Exclude biases and normalization layers from weight decay."
    )

    @field_validator("nesterov")
    def _nesterov_needs_momentum(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("momentum") == 0:
            raise ValueError("false when momentum is 0 (Nesterov momentum needs momentum > 0)")
        return value


class ScheduleConfig(Section):
    name: Literal["none", "step", "multistep", "cosine", "onecycle", "plateau"] = Field(
        "none", description="Learning-rate schedule."
    )
    step_size: int = Field(10, ge=1, description="step: epochs between decays.")
    milestones: list[int] = Field([30, 60], description="multistep: epochs at which to decay.")
    gamma: float = Field(0.1, gt=0, le=1, description="step/multistep: decay factor.")
    warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="cosine: linear warmup from 0, in epochs (stepped per batch); at least 100 "
        "steps (a fifth of the run at most), so that it holds on small datasets too.",
    )
    min_lr: float = Field(0.0, ge=0, description="cosine: learning rate at the end.")
    max_lr_mult: float = Field(
        10.0, gt=0, description="onecycle: peak learning rate as a multiple of optim.lr."
    )
    pct_start: float = Field(0.3, gt=0, lt=1, description="onecycle: fraction spent rising.")
    monitor: Literal["val_loss", "val_acc"] = Field(
        "val_loss", description="plateau: validation metric to watch."
    )
    patience: int = Field(2, ge=0, description="plateau: epochs without improvement before decay.")
    factor: float = Field(0.1, gt=0, lt=1, description="plateau: decay factor.")


class EarlyStoppingConfig(Section):
    monitor: Literal["val_loss", "val_acc"] = Field(
        "val_acc", description="Validation metric that selects best.pt and drives early stopping."
    )
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="Whether the monitor should go down or up; auto derives it."
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without improvement; null = never."
    )
    min_delta: float = Field(0.0, ge=0.0, description="Smallest change that counts as improvement.")
    restore_best: bool = Field(True, description="Restore the best epoch's weights at the end.")


class EmaConfig(Section):
    decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="EMA of the weights: the average's share kept at each update "
        "(0.999 is usual); 0 = off. Parameters are averaged, BatchNorm statistics copied.",
    )
    warmup: bool = Field(
        True,
        description="Ramp the decay up as min(decay, (1 + t) / (10 + t)) at the t-th update, "
        "so that the average follows the weights early in any run; false = decay from the start.",
    )
    start_epoch: int = Field(
        0, ge=0, description="Epochs trained before averaging starts (until then: the weights)."
    )
    every: int = Field(1, ge=1, description="Optimizer steps between updates of the average.")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, description="Number of training epochs.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Label smoothing of the training loss (val/test loss: none)."
    )
    grad_clip: float | None = Field(
        None, gt=0, description="Clip the gradients' global norm to this value; null = off."
    )
    accumulate: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    # 32 and 16 also as numbers, so an editor accepts `precision: 16` as dltrain does.
    precision: Literal["auto", "32", "bf16", "16", 32, 16] = Field(
        "auto", description="auto: bf16 autocast on CUDA that supports it, else fp32."
    )
    deterministic: bool = Field(
        False, description="Use deterministic algorithms only (exactly repeatable, may be slower)."
    )
    compile: Literal["auto", True, False] = Field(
        "auto", description="torch.compile the model; auto = off (measured slower on CPU and H200)."
    )
    channels_last: Literal["auto", True, False] = Field(
        "auto", description="channels_last memory format for conv nets; auto = on CPU and CUDA."
    )
    sync_batchnorm: bool = Field(
        False,
        description="Distributed runs: batch-norm statistics over all processes' batches "
        "(SyncBatchNorm; CUDA only).",
    )
    train_eval_size: int = Field(
        1024,
        ge=0,
        description="Training samples re-measured in eval mode each epoch (the honest "
        "train-val gap), at most a tenth of the training split so that the pass costs a few "
        "% of the epoch; 0 = off.",
    )
    early_stopping: EarlyStoppingConfig = _nested(
        EarlyStoppingConfig, "Best-epoch selection and early stopping."
    )
    ema: EmaConfig = _nested(
        EmaConfig,
        "With decay > 0, the average and the trained weights are both validated each epoch; "
        "the better of the two is what early stopping judges and best.pt holds.",
    )
    class_weights: Literal["none", "balanced"] | list[float] = Field(
        "none",
        description="Training loss weight per class: none, balanced (inverse class frequency "
        "of the training split, mean 1) or a list with one weight per class.",
    )

    @field_validator("class_weights")
    def _usable_weights(cls, value):
        if isinstance(value, list) and (min(value, default=-1) < 0 or not any(value)):
            raise ValueError("weights >= 0, at least one of them > 0")
        return value

    @field_validator("precision", mode="before")
    def _number_as_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class FinetuneConfig(Section):
    freeze: Literal["all_but_head", "none"] | list[str] = Field(
        "all_but_head",
        description="Frozen parameters: all_but_head, none, or a list of module-name prefixes.",
    )
    head_lr_mult: float = Field(1.0, gt=0, description="Learning rate multiplier of the head.")
    unfreeze_at_epoch: int | None = Field(
        None, ge=1, description="Unfreeze everything from this epoch on; null = never."
    )


class EvalConfig(Section):
    tta: Literal["none", "flip", "flip+shift"] = Field(
        "none",
        description="dltrain eval's test-time augmentation: logits averaged over the image and "
        "its mirror (flip), and ±1 px shifts of both (flip+shift); --tta overrides.",
    )


class MlflowConfig(Section):
    tracking_uri: str | None = Field(
        None,
        description="Where MLflow keeps runs: http://host:port, sqlite:///path/mlflow.db, a "
        "folder; null = MLflow's default (MLFLOW_TRACKING_URI, else ./mlruns).",
    )
    experiment: str | None = Field(None, description="Experiment name; null = the run's name.")
    run_name: str | None = Field(None, description="MLflow run name; null = the run folder's name.")


class WandbConfig(Section):
    project: str | None = Field(None, description="W&B project; null = the run's name.")
    entity: str | None = Field(None, description="W&B team or user; null = your default entity.")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online",
        description="online, offline (files in <run>/wandb, to `wandb sync` later) or disabled.",
    )
    tags: list[str] = Field([], description="Tags of the W&B run.")


class LoggingConfig(Section):
    tensorboard: bool = Field(
        False, description="Write TensorBoard scalars to <run>/tensorboard (extra: tensorboard)."
    )
    # Off unless set: an installed package never switches a tracker on by itself.
    mlflow: MlflowConfig | None = Field(
        None,
        description="Track the run in MLflow (extra: mlflow); null = off, {} = on with the "
        "defaults below.",
    )
    wandb: WandbConfig | None = Field(
        None,
        description="Track the run in Weights & Biases (extra: wandb); null = off, {} = on with "
        "the defaults below.",
    )


class CheckpointConfig(Section):
    save_last: bool = Field(True, description="Checkpoint every epoch as last.pt.")
    save_best: bool = Field(
        True, description="Checkpoint as best.pt when the monitored metric improves."
    )
    interval: float = Field(
        30.0,
        ge=0,
        description="Seconds of training between checkpoint writes: in between, the epochs' "
        "checkpoints are kept as copies in memory and written at the end, on a stop or a "
        "failure, or once this long has passed; a SIGKILL loses the epoch in progress and at "
        "most this many seconds of finished epochs before it. 0 = write every epoch.",
    )


class SweepConfig(Section):
    metric: Literal["val_acc", "val_loss"] | None = Field(
        None, description="Validation metric the sweep selects on; null = early_stopping.monitor."
    )
    trials: int = Field(20, ge=1, description="Trials to run (dltrain sweep --trials overrides).")
    sampler: Literal["random", "tpe"] = Field(
        "random", description="random (the course's method) or tpe (Optuna's TPE)."
    )
    params: dict[str, str] = Field(
        {},
        description="Search space by dotted key: loguniform(lo, hi), uniform(lo, hi), "
        "int(lo, hi[, log]) or choice([a, b, ...]).",
    )


def lower_is_better(metric: str, mode: str = "auto") -> bool:
    """The one rule for which way a metric improves: a loss goes down, anything else up; an
    explicit mode (early stopping's min or max) wins."""
    return mode == "min" if mode != "auto" else metric.endswith("loss")


def image_size(data: DataConfig) -> int | None:
    """The image size known without reading data (imagefolder: only through data.resize)."""
    sizes = {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}
    return data.resize or {**sizes, "fake": data.fake.image_size}.get(data.dataset)


class Config(Section):
    # A plain folder name: no "/", and no leading "." (".." would climb out of runs/, and
    # `dltrain runs` skips hidden folders).
    name: str = Field(
        "run",
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="Run name; outputs go to runs/<name>/.",
    )
    seed: int = Field(0, description="Seed for splits, initialization and shuffling.")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="auto, cpu, cuda, cuda:N or mps.",
    )
    data: DataConfig = _nested(DataConfig, "Dataset and loading.")
    model: ModelConfig = _nested(ModelConfig, "Model architecture.")
    optim: OptimConfig = _nested(OptimConfig, "Optimizer.")
    schedule: ScheduleConfig = _nested(ScheduleConfig, "Learning-rate schedule.")
    train: TrainConfig = _nested(TrainConfig, "Training loop.")
    finetune: FinetuneConfig = _nested(FinetuneConfig, "Used by `dltrain finetune` only.")
    checkpoint: CheckpointConfig = _nested(CheckpointConfig, "What checkpoints to write.")
    eval: EvalConfig = _nested(EvalConfig, "Used by `dltrain eval` only.")
    logging: LoggingConfig = _nested(LoggingConfig, "Extra logging.")
    sweep: SweepConfig = _nested(SweepConfig, "Used by `dltrain sweep` only.")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _section_of(annotation) -> type[BaseModel] | None:
    """The section a field holds: `Section`, or `Section | None` (a section off by default)."""
    members = [m for m in get_args(annotation) if m is not type(None)] or [annotation]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]
    return None


def _fields(model: type[BaseModel], parent: tuple = ()):
    """(path, field, whether it is a section) of every field; a section before the fields in it."""
    for name, field in model.model_fields.items():
        section = _section_of(field.annotation)
        yield (*parent, name), field, section is not None
        if section is not None:
            yield from _fields(section, (*parent, name))


# Every field by its path, sections too; and the fields that hold values, by dotted key (a
# section that is null by default holds one too: null, off).
FIELDS = {path: field for path, field, _ in _fields(Config)}
KEYS = {
    ".".join(path): field
    for path, field, section in _fields(Config)
    if not section or field.default is None
}


def reference_markdown() -> str:
    """The config reference as a Markdown table: key, default, description."""
    rows = ["| key | default | what it does |", "|---|---|---|"]
    for key, field in KEYS.items():
        default = field.get_default(call_default_factory=True)
        shown = yaml.safe_dump(default, default_flow_style=True, width=1000).removesuffix("...\n")
        rows.append(f"| `{key}` | `{shown.strip()}` | {field.description} |")
    return "\n".join(rows) + "\n"
