"""The config schema, YAML loading and `--set` overrides.

A config travels YAML -> `load_config` -> validated `Config`. Every field has a default and
a one-line description (shown by `dltrain config schema`). All problems in a config are
reported at once, each as one line naming the dotted path, the bad value and what was
expected. This module must not import torch: `dltrain config show` stays fast.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from dltrain.errors import ConfigError, DltrainError

# The names each registry holds; a test keeps these equal to the registries themselves.
DATASETS = ("digits", "fake", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder")
MODELS = ("mlp", "cnn", "alexnet", "resnet18")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_error(expected: str):
    """A wrap validator that reports a union's failure as one line instead of one per member."""

    def check(cls, value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(expected) from None

    return check


class NormalizeStats(Section):
    mean: list[float] = Field(min_length=1, description="Per-channel mean (of 0-1 pixels).")
    std: list[float] = Field(min_length=1, description="Per-channel standard deviation.")

    @field_validator("std")
    @classmethod
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


class DataConfig(Section):
    dataset: Literal[DATASETS] = Field("digits", description="Dataset to train on.")
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
    normalize: Literal["dataset", "none"] | NormalizeStats = Field(
        "dataset", description="dataset (its own mean/std), none, or {mean: [...], std: [...]}."
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Training-split augmentation (never val/test)."
    )
    resize: int | None = Field(
        None, ge=4, description="Resize images to this square size (e.g. 224); null = keep."
    )
    num_workers: int = Field(2, ge=0, description="imagefolder: DataLoader worker processes.")
    skip_bad_files: bool = Field(
        False, description="imagefolder: skip unreadable images with a warning instead of failing."
    )
    fake: FakeDataConfig = Field(
        default_factory=FakeDataConfig, description="Shape of the `fake` smoke-test dataset."
    )

    _normalize_one_error = field_validator("normalize", mode="wrap")(
        classmethod(_one_error("dataset, none, or {mean: [...], std: [...]} of equal length"))
    )

    @field_validator("val_split", "test_split")
    @classmethod
    def _fraction_or_count(cls, value: float) -> float:
        if value <= 0 or (value >= 1 and not float(value).is_integer()):
            raise ValueError("a fraction between 0 and 1, or a whole count >= 1")
        return int(value) if value >= 1 else value


class ModelConfig(Section):
    name: Literal[MODELS] = Field("mlp", description="Model architecture.")
    hidden: list[int] = Field(
        [256, 128], description="mlp: sizes of the hidden layers, input to output."
    )
    channels: list[int] = Field(
        [32, 64, 128], description="cnn: output channels of each conv block."
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="mlp/cnn/alexnet: dropout probability (not resnet18)."
    )
    batch_norm: bool = Field(False, description="mlp/cnn: batch normalization after each layer.")
    pretrained: str = Field(
        "none", description="resnet18/alexnet: none, imagenet, or the path of a state-dict file."
    )
    small_input: bool | Literal["auto"] = Field(
        "auto", description="alexnet/resnet18: stem for 28-32 px images; auto = when under 64 px."
    )

    _small_input_one_error = field_validator("small_input", mode="wrap")(
        classmethod(_one_error("true, false or auto"))
    )

    @field_validator("hidden", "channels")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("a list of sizes, each >= 1")
        return sizes


class OptimConfig(Section):
    name: Literal[OPTIMIZERS] = Field("adam", description="Optimizer.")
    lr: float = Field(1e-3, gt=0.0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd/rmsprop: momentum.")
    nesterov: bool = Field(False, description="sgd: use Nesterov momentum.")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (decoupled for adamw).")
    no_decay_bias_norm: bool = Field(
        False, description="Exclude biases and normalization layers from weight decay."
    )

    @field_validator("nesterov")
    @classmethod
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
        0.0, ge=0, description="cosine: linear warmup from 0, in epochs (stepped per batch)."
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
        "auto",
        description="torch.compile the model; auto = off (measured slower on CPU and H200).",
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
        "train-val gap); 0 = off.",
    )
    early_stopping: EarlyStoppingConfig = Field(
        default_factory=EarlyStoppingConfig, description="Best-epoch selection and early stopping."
    )

    @field_validator("precision", mode="before")
    @classmethod
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

    _freeze_one_error = field_validator("freeze", mode="wrap")(
        classmethod(_one_error("all_but_head, none, or a list of module-name prefixes"))
    )


class LoggingConfig(Section):
    tensorboard: bool = Field(
        False, description="Write TensorBoard scalars to <run>/tensorboard (extra: tensorboard)."
    )


class CheckpointConfig(Section):
    save_last: bool = Field(True, description="Write last.pt at the end of every epoch.")
    save_best: bool = Field(True, description="Write best.pt when the monitored metric improves.")


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


# Image sizes known without reading data (imagefolder: only through data.resize).
DATASET_SIZES = {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}
# AlexNet's smallest input with (True) and without (False) the small-input stem; a test keeps
# these equal to what models.py builds.
ALEXNET_MIN_SIZE = {True: 15, False: 63}


def image_size(data: DataConfig) -> int | None:
    if data.resize:
        return data.resize
    if data.dataset == "fake":
        return data.fake.image_size
    return DATASET_SIZES.get(data.dataset)


class Config(Section):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name; outputs go to runs/<name>/."
    )
    seed: int = Field(0, description="Seed for splits, initialization and shuffling.")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="auto, cpu, cuda, cuda:N or mps.",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset and loading.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model architecture.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer.")
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="Learning-rate schedule."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training loop.")
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="Used by `dltrain finetune` only."
    )
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="What checkpoints to write."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Extra logging.")
    sweep: SweepConfig = Field(
        default_factory=SweepConfig, description="Used by `dltrain sweep` only."
    )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def reference(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """The config reference as Markdown table rows: key, default, description."""
    model = model or Config
    rows = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not NormalizeStats:
            rows += reference(sub, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        shown = (
            yaml.safe_dump(
                default.model_dump(mode="json") if isinstance(default, BaseModel) else default,
                default_flow_style=True,
                width=1000,
            )
            .strip()
            .removesuffix("...")
            .strip()
        )
        rows.append(f"| `{prefix}{name}` | `{shown}` | {field.description} |")
    return rows


def reference_markdown() -> str:
    return "\n".join(["| key | default | what it does |", "|---|---|---|", *reference()]) + "\n"


# --- YAML --------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) wants a dot in a float; YAML 1.2 and every user expect 1e-3 to be a number.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with the safe loader; problems become a one-line ConfigError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        problem = err.problem or "invalid YAML"
        if "could not determine a constructor" in problem:
            tag = problem.split("tag ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
            problem = f"tag {tag} is not allowed (dltrain reads plain YAML only; remove the tag)"
        raise ConfigError([f"{where}: {problem}"], source) from None
    except yaml.YAMLError as err:  # e.g. a character YAML does not allow
        raise ConfigError([f"invalid YAML: {str(err).splitlines()[0]}"], source) from None


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DltrainError(f"config file not found: {path} (give the path of a YAML file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["not a text file; expected a YAML config"], str(path)) from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(["the file is empty; expected a mapping of sections"], str(path))
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError([f"top level is a {kind}; expected a mapping of sections"], str(path))
    return data


# --- overrides ---------------------------------------------------------------------------


def apply_overrides(data: dict, overrides: list[str], source: str) -> set[str]:
    """Apply `key.path=value` strings in place; returns the dotted paths they set."""
    problems, paths = [], set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
            continue
        value = parse_yaml(raw, f"--set {key}") if raw.strip() else None
        node, parts = data, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                problems.append(f"--set {key}: {where} is a value, not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
            paths.add(key)
    if problems:
        raise ConfigError(problems, source)
    return paths


def set_key(data: dict, key: str, value: Any) -> bool:
    """Set a dotted key in a raw config dict; False if a section on the way is not a mapping."""
    *sections, last = key.split(".")
    for part in sections:
        if data.get(part) is None:
            data[part] = {}
        data = data[part]
        if not isinstance(data, dict):
            return False
    data[last] = value
    return True


def apply_params(data: dict, params: list[str], source: str) -> set[str]:
    """Add `KEY=SPEC` strings (--param) to sweep.params in place; returns their dotted paths."""
    problems, paths = [], set()
    for item in params:
        key, sep, spec = item.partition("=")
        key, spec = key.strip(), spec.strip()
        if not sep or not key or not spec:
            example = "--param 'optim.lr=loguniform(1e-4, 1e-1)'"
            problems.append(f"--param {item!r}: expected KEY=SPEC, e.g. {example}")
            continue
        sweep = data.get("sweep")
        if sweep is None:
            sweep = data["sweep"] = {}
        if not isinstance(sweep, dict) or not isinstance(sweep.setdefault("params", {}), dict):
            problems.append(f"--param {key}: sweep.params is a value, not a section")
            continue
        if sweep["params"] is None:
            sweep["params"] = {}
        sweep["params"][key] = spec
        paths.add(f"sweep.params.{key}")
    if problems:
        raise ConfigError(problems, source)
    return paths


# --- sweep search spaces -----------------------------------------------------------------

SPACE_KINDS = ("loguniform", "uniform", "int", "choice")
SPACE_FORMS = "loguniform(lo, hi), uniform(lo, hi), int(lo, hi[, log]) or choice([a, b, ...])"


@dataclass(frozen=True)
class Space:
    """One parameter's search space, parsed from e.g. `loguniform(1e-4, 1e-1)`."""

    kind: str  # one of SPACE_KINDS
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def ends(self) -> tuple:
        """The values at its edges: each must be a valid value of the key it sets."""
        return self.choices if self.kind == "choice" else (self.low, self.high)


def parse_space(spec: str) -> Space:
    """`kind(arguments)`, the arguments read as YAML; ValueError says what is wrong."""
    match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", spec, flags=re.DOTALL)
    if not match:
        raise ValueError(f"{spec!r} is not a search space; expected {SPACE_FORMS}")
    kind, text = match.groups()
    if kind not in SPACE_KINDS:
        hint = _closest(kind, SPACE_KINDS)
        line = f"{kind!r} is not one of {', '.join(SPACE_KINDS)}"
        raise ValueError(line + (f"; did you mean {hint}?" if hint else ""))
    try:
        args = parse_yaml(f"[{text}]", spec)
    except ConfigError:
        raise ValueError(f"{spec}: cannot read the arguments; expected {SPACE_FORMS}") from None
    if kind == "choice":
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise ValueError(f"{spec}: expected a non-empty list, e.g. choice([sgd, adam])")
        if len({repr(value) for value in args[0]}) < len(args[0]):
            raise ValueError(f"{spec}: a value is listed twice")
        return Space("choice", choices=tuple(args[0]))
    log = kind == "loguniform"
    if kind == "int" and len(args) == 3 and args[2] == "log":
        args, log = args[:2], True
    number = int if kind == "int" else int | float
    form = "int(lo, hi) or int(lo, hi, log) with whole numbers" if kind == "int" else kind
    if len(args) != 2 or not all(
        isinstance(a, number) and not isinstance(a, bool) and math.isfinite(a) for a in args
    ):
        raise ValueError(f"{spec}: expected {form}{'' if kind == 'int' else '(lo, hi)'}")
    low, high = args
    if low >= high:
        raise ValueError(f"{spec}: lo must be below hi")
    if log and low <= 0:
        raise ValueError(f"{spec}: a log scale needs lo > 0")
    return Space(kind, low, high, log)


def config_keys(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """Every value's dotted key (data.val_split, optim.lr, ...), sections left out."""
    keys = []
    for name, field in (model or Config).model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += config_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _sweep_problems(data: dict, sweep: SweepConfig | None, overridden: set[str]) -> list[str]:
    """One line per search-space entry with an unknown key, a bad range, or an edge value
    the key does not take."""
    if sweep is None:
        return []
    keys = [key for key in config_keys() if not key.startswith("sweep.")]
    lines = []
    for key, spec in sweep.params.items():
        where = f"sweep.params.{key}"
        problem = _space_problem(data, key, spec, keys)
        if problem:
            lines.append(f"{where}: {problem}" + (" (from --param)" if where in overridden else ""))
    return lines


def _space_problem(data: dict, key: str, spec: str, keys: list[str]) -> str | None:
    if key not in keys:
        inside = [k for k in keys if k.startswith(key + ".")]
        if key.startswith("sweep.") or key == "sweep":
            return "the sweep section itself cannot be swept"
        if inside:
            return f"{key} is a section; name a key in it, e.g. {inside[0]}"
        match = _closest(key, keys)
        hint = f"did you mean {match}?" if match else "see dltrain config reference"
        return f"unknown config key; {hint}"
    try:
        space = parse_space(spec)
    except ValueError as err:
        return str(err)
    for value in space.ends():
        trial = copy.deepcopy(data)
        if not set_key(trial, key, value):
            return None  # the section itself is wrong: reported on its own
        try:
            Config.model_validate(trial)
        except ValidationError as err:
            for error in err.errors():
                if f"{_path(tuple(error['loc']))}.".startswith(f"{key}."):
                    return f"{spec}: {_describe(error).removeprefix(key + ': ')}"
    return None


# --- validation --------------------------------------------------------------------------


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section model that holds the field at `loc` (walks nested sections)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def _choices_at(loc: tuple) -> tuple | None:
    model = _model_at(loc)
    field = model.model_fields.get(loc[-1]) if model else None
    if field is None:
        return None
    annotation = field.annotation
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


def _closest(word: str, options) -> str | None:
    found = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return found[0] if found else None


def _path(loc: tuple) -> str:
    """A dotted path; a key that is not plain text is shown quoted (keeps lines single)."""
    return ".".join(str(p) if str(p).isprintable() and " " not in str(p) else repr(p) for p in loc)


def _describe(error: dict) -> str:
    loc = tuple(error["loc"])
    path = _path(loc)
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        model = _model_at(loc)
        keys = list(model.model_fields) if model else []
        prefix = _path(loc[:-1])
        match = _closest(loc[-1], keys)
        if match:
            return f"{path}: unknown key; did you mean {prefix + '.' if prefix else ''}{match}?"
        return f"{path}: unknown key; valid keys here: {', '.join(keys)}"
    if kind == "literal_error":
        choices = _choices_at(loc) or ()
        line = f"{path}: {value!r} is not one of {', '.join(map(str, choices))}"
        match = _closest(value, choices)
        return line + (f"; did you mean {match}?" if match else "")
    if kind == "model_type":
        return f"{path}: got {value!r}; expected a section (a mapping of keys)"
    if loc[:2] == ("sweep", "params") and len(loc) == 3:
        dotted = " (keys are dotted: optim.lr)" if isinstance(value, dict) else ""
        return f"{path}: got {value!r}; expected a search space: {SPACE_FORMS}{dotted}"
    expected = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    if kind == "string_pattern_mismatch" and loc == ("device",):
        expected = "auto, cpu, cuda, cuda:N or mps"
    elif kind == "string_pattern_mismatch" and loc == ("name",):
        expected = "letters, digits, '_', '.' or '-' only"
    return f"{path}: got {value!r}; expected {expected}"


def _cross_problems(model: ModelConfig | None, data: DataConfig | None) -> list[str]:
    """Mismatches between model and data that are known before any data is read."""
    problems = []
    if model is None:
        return problems
    if model.pretrained == "imagenet" and model.name not in ("alexnet", "resnet18"):
        problems.append(
            f"model.pretrained: imagenet weights exist for alexnet and resnet18, not "
            f"{model.name}; use none or the path of a state-dict file"
        )
    size = image_size(data) if data is not None else None
    if model.name == "alexnet" and size is not None:
        small = size < 64 if model.small_input == "auto" else model.small_input
        smallest = ALEXNET_MIN_SIZE[bool(small)]
        if size < smallest:
            problems.append(
                f"model.name: alexnet (small_input {str(small).lower()}) needs images of at "
                f"least {smallest} px; {data.dataset} gives {size} px: set data.resize, or use "
                "cnn or resnet18"
            )
    return problems


def _section(model: type[Section], data: dict, key: str):
    """One section, if it is valid on its own (to check across sections despite errors)."""
    try:
        return model.model_validate(data.get(key) or {})
    except (ValidationError, AttributeError, TypeError):
        return None


def validate(data: dict, source: str = "config", overridden: set[str] = frozenset()) -> Config:
    lines = []
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        cfg = None
        for error in err.errors():
            path = _path(tuple(error["loc"]))
            lines.append(_describe(error) + (" (from --set)" if path in overridden else ""))
    if cfg is not None:
        lines += _cross_problems(cfg.model, cfg.data)
        lines += _sweep_problems(data, cfg.sweep, overridden)
    else:
        model, data_section = (
            _section(ModelConfig, data, "model"),
            _section(DataConfig, data, "data"),
        )
        lines += _cross_problems(model, data_section)
        lines += _sweep_problems(data, _section(SweepConfig, data, "sweep"), overridden)
    if lines:
        raise ConfigError(lines, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] = (), params: list[str] = ()) -> Config:
    """Read a YAML config, apply `--set` overrides and `--param` search spaces, validate;
    ConfigError lists every problem."""
    data = read_config_file(path)
    overridden = apply_overrides(data, list(overrides), str(path))
    overridden |= apply_params(data, list(params), str(path))
    return validate(data, str(path), overridden)
