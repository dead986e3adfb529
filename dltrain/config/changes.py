"""Which `--set` changes a checkpoint can take: its weights fix the architecture and the data's
shape, classes and split; on resume its optimizer, schedule and early-stopping states fix those
too. `check_changes` compares the checkpoint's config with the one the overrides give, before
anything is built or written (checkpoint.open_saved calls it). Torch-free."""

from collections.abc import Callable
from typing import Any, NamedTuple

from dltrain.config.reference import KEYS
from dltrain.config.schema import Config
from dltrain.errors import DltrainError

PURPOSES = ("eval", "predict", "export", "finetune", "resume")
_ANY = PURPOSES
_RESUME = ("resume",)

_NEW_RUN = "a new run from these weights can change it: dltrain finetune CONFIG --from {source}"
_WEIGHTS = "the weights fit only the architecture they were trained as; train a new run for another"
_DATA = "the weights fit only the images and classes they were trained on; " + _NEW_RUN
_SPLIT = "it moves the validation/test split, so images the model trained on could be measured"
_OPTIMIZER = (
    "on resume the optimizer, its parameter groups and settings come back from the "
    "checkpoint's state, which a changed optimizer cannot take; " + _NEW_RUN
)
_SCHEDULE = "on resume the schedule goes on from the checkpoint's state; " + _NEW_RUN
_STOPPING = "the checkpoint's best value so far was measured by the monitor it had"

_ONE_CYCLE = (
    "a one-cycle schedule's state counts the optimizer steps of the run as it was set up "
    "(epochs x steps per epoch) and cannot stretch or shrink; " + _NEW_RUN
)


def _split_by_seed(cfg: dict) -> bool:
    return cfg["data"]["split_seed"] is None


def _one_cycle(cfg: dict) -> bool:
    return cfg["schedule"]["name"] == "onecycle"


class Fixed(NamedTuple):
    purposes: tuple[str, ...]  # what the checkpoint is opened for, where the key is fixed
    why: str  # "{source}" stands for the checkpoint
    when: Callable[[dict], bool] | None = None  # only if the checkpoint's config says so


# Keys a checkpoint fixes (a key ending in "." stands for its whole section). Any other key
# may change: data.root, data.download, device, batch sizes, eval.tta, train.precision, and on
# resume train.epochs, patience, augmentation, EMA, ...
FIXED: dict[str, Fixed] = {
    "model.": Fixed(_ANY, _WEIGHTS),
    "data.dataset": Fixed(_ANY, _DATA),
    "data.resize": Fixed(_ANY, _DATA),
    "data.normalize": Fixed(_ANY, "the weights expect the pixel scaling they were trained with"),
    "data.fake.": Fixed(_ANY, _DATA),
    "seed": Fixed(
        _ANY, _SPLIT + " (the run's seed draws it: data.split_seed is null)", _split_by_seed
    ),
    "data.split_seed": Fixed(_ANY, _SPLIT),
    "data.val_split": Fixed(_ANY, _SPLIT),
    "data.test_split": Fixed(_ANY, _SPLIT),
    "optim.": Fixed(_RESUME, _OPTIMIZER),
    "finetune.head_lr_mult": Fixed(_RESUME, _OPTIMIZER),
    "schedule.": Fixed(_RESUME, _SCHEDULE),
    "train.early_stopping.monitor": Fixed(_RESUME, _STOPPING),
    "train.early_stopping.mode": Fixed(_RESUME, _STOPPING),
    "train.epochs": Fixed(_RESUME, _ONE_CYCLE, _one_cycle),
    "train.accumulate": Fixed(_RESUME, _ONE_CYCLE, _one_cycle),
    "data.batch_size": Fixed(_RESUME, _ONE_CYCLE, _one_cycle),
}


def check_changes(saved: Config, changed: Config, purpose: str, source: str) -> None:
    """Refuse, in one line, the keys on which `changed` (the checkpoint's config with `--set`)
    differs from `saved` (the checkpoint's own) where FIXED says the checkpoint cannot follow
    for `purpose`; name each key, both values and why."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    old, new = saved.model_dump(mode="json"), changed.model_dump(mode="json")
    problems = []
    for key in KEYS:
        before, after, rule = _dig(old, key), _dig(new, key), _rule(key)
        if before == after or rule is None or purpose not in rule.purposes:
            continue
        if rule.when is None or rule.when(old):
            why = rule.why.format(source=source)
            problems.append(
                f"--set {key}={_show(after)} (the checkpoint has {_show(before)}): {why}"
            )
    if problems:
        raise DltrainError(f"{source}: {purpose} cannot take " + "; ".join(problems))


def _rule(key: str) -> Fixed | None:
    return next(
        (rule for fixed, rule in FIXED.items() if key == fixed or key.startswith(fixed)), None
    )


def _dig(data: dict, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value).replace("'", "")
