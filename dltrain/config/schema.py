"""The config schema: one pydantic section per part of a run, each field with its default and a
one-line description (`dltrain config reference`, `dltrain config schema`). Extra keys are
forbidden everywhere. Torch-free: `dltrain config show` stays fast."""

from typing import Literal

import yaml
from pydantic import Field, ValidationInfo, field_validator

from dltrain.config.data import DataConfig
from dltrain.config.section import Section, _nested
from dltrain.models import facts
from dltrain.registry import OPTIMIZERS


class ModelConfig(Section):
    name: str = Field(
        "mlp",
        description="Model: the course's mlp, cnn, alexnet or resnet18, a torchvision "
        "classifier (mobilenet_v3_small, efficientnet_b0, ...) or `timm/<name>` (extra: timm); "
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
        description="online, offline (files in `<run>/wandb`, to `wandb sync` later) or disabled.",
    )
    tags: list[str] = Field([], description="Tags of the W&B run.")


class LoggingConfig(Section):
    tensorboard: bool = Field(
        False, description="Write TensorBoard scalars to `<run>/tensorboard` (extra: tensorboard)."
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


class Config(Section):
    # A plain folder name: no "/", and no leading "." (".." would climb out of runs/, and
    # `dltrain runs` skips hidden folders).
    name: str = Field(
        "run",
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="Run name; outputs go to `runs/<name>/`.",
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
