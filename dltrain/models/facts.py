"""What a model name means, held once and torch-free: the names a config accepts and where each
comes from, which have ImageNet weights and the preprocessing those weights were made with,
the input sizes each model takes, and the course's small-input rule. Config checking,
`finetune`, the builders, the data layer's callers and `dltrain models` all read it here.

The course's four are described below. The zoos' rows (every torchvision classifier, every
timm model as `timm/<name>`) are in zoo.json, written from the libraries by
`python -m dltrain.models.catalog` (tests/test_zoo.py checks that it is current); reading a
file keeps `dltrain --help` and `dltrain config show` free of torch. A name the file lacks is
looked up in the installed library only when its version differs from the file's.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from dltrain.models.names import TIMM  # noqa: F401 - read as facts.TIMM

TIMM_EXTRA = "pip install 'dltrain[timm]'"
SMALL_INPUT_BELOW = 64  # the course's rule: small_input auto means the small stem under 64 px
ZOO_FILE = Path(__file__).with_name("zoo.json")

# The course's four (dltrain/models/course.py). alexnet and resnet18 keep torchvision's layer
# names, so torchvision's ImageNet weights load into them; `stem`: they have a small-input
# stem. `min_size` by stem: AlexNet's 11x11 stride-4 conv and three stride-2 pools leave
# nothing below 63 px, its small stem below 15 (a test runs the real layers at both sizes and
# one pixel less). `params` at 1,000 classes and 224 px; mlp and cnn's depend on the data.
COURSE: dict[str, dict[str, Any]] = {
    "mlp": {"source": "course"},
    "cnn": {"source": "course"},
    "alexnet": {
        "source": "course", "weights": "IMAGENET1K_V1", "params": 61_100_840, "size": 224,
        "stats": "imagenet", "stem": True, "min_size": {True: 15, False: 63},
    },
    "resnet18": {
        "source": "course", "weights": "IMAGENET1K_V1", "params": 11_689_512, "size": 224,
        "stats": "imagenet", "stem": True,
    },
}  # fmt: skip


class Input(NamedTuple):
    """What a model asks of the data: gray repeated to RGB, and with pretrained weights their
    mean/std and input size (None: the data's own). The data layer's `build_splits(...,
    **model_input(cfg)._asdict())` applies them unless the config sets its own."""

    rgb: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    size: int | None = None


@cache
def table() -> dict:
    """zoo.json: {"versions": {library: version}, "stats": {key: [mean, std]}, "models": rows}."""
    return json.loads(ZOO_FILE.read_text(encoding="utf-8"))


def timm_installed() -> bool:
    return importlib.util.find_spec("timm") is not None


def lookup(name: str) -> dict | None:
    """The row of a model name: {"source", "params", "weights", "size", "min_size", "fixed",
    "stats", ...}; None for a name no zoo has."""
    if name in COURSE:
        return COURSE[name]
    row = table()["models"].get(name)
    return row if row is not None else _live(name)


def _live(name: str) -> dict | None:
    """A name zoo.json lacks, from the installed library if it is not the version the file was
    written from (a newer torchvision or timm may have more models). Imports torch."""
    library = "timm" if name.startswith(TIMM) else "torchvision"
    installed = _version(library)
    if installed is None or installed == table()["versions"].get(library):
        return None
    from dltrain.models import catalog

    return catalog.live_row(name)


def _version(library: str) -> str | None:
    try:
        return importlib.metadata.version(library).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def names() -> list[str]:
    """Every name a config accepts: the course's, torchvision's, then timm's."""
    return [*COURSE, *table()["models"]]


def unknown_name(name: str) -> str | None:
    """The one line for a name that is not a model, with the closest one; None if it is."""
    if lookup(name) is not None:
        return None
    close = difflib.get_close_matches(name, names(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    known = f"{len(names()):,} models dltrain knows"
    return f"{name!r} is not one of the {known}{hint} (dltrain models lists them)"


def listing(pattern: str | None = None, pretrained: bool = False) -> list[tuple[str, dict]]:
    """(name, row) of the models whose name matches the glob (`*convnext*`), in names() order;
    `pretrained`: only those with ImageNet weights. timm's rows only while timm is installed."""
    rows, timm = [], timm_installed()
    for name in names():
        row = lookup(name)
        if row["source"] == "timm" and not timm:
            continue
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        if pretrained and not row.get("weights"):
            continue
        rows.append((name, row))
    return rows


def source(name: str) -> str:
    """course, torchvision or timm."""
    return lookup(name)["source"]


def has_imagenet(name: str) -> bool:
    row = lookup(name)
    return bool(row and row.get("weights"))


def weights(name: str) -> str | None:
    """The name of the model's ImageNet weights: torchvision's enum entry, timm's tag."""
    row = lookup(name)
    return row.get("weights") if row else None


def imagenet_problem(name: str) -> str | None:
    """Why `pretrained: imagenet` cannot be had for this model, in one line; None if it can."""
    if has_imagenet(name):
        return None
    return (
        f"{name} has no ImageNet weights (dltrain models --pretrained lists the models that "
        "have them); use none or the path of a state-dict file"
    )


def stats(row: dict) -> tuple[list[float], list[float]]:
    """The mean and std the row's weights were made with."""
    mean, std = table()["stats"][row["stats"]] if isinstance(row["stats"], str) else row["stats"]
    return list(mean), list(std)


def small_input(setting, size: int) -> bool:
    """The course's small-input rule: the small stem for images under 64 px when auto."""
    return size < SMALL_INPUT_BELOW if setting == "auto" else bool(setting)


def needs_rgb(cfg) -> bool:
    """Whether gray images are repeated to RGB for this model config (a ModelConfig): for
    ImageNet weights (they expect 3 channels), and for every torchvision zoo model (their
    first layer takes 3 channels; repeating is cheaper than a new first layer). The course's
    models and timm's (`in_chans`) take the data's channels."""
    return cfg.pretrained == "imagenet" or source(cfg.name) == "torchvision"


def model_input(cfg) -> Input:
    """What the model config asks of the data (see `Input`)."""
    row = lookup(cfg.name)
    if cfg.pretrained != "imagenet" or not row.get("weights"):
        return Input(rgb=needs_rgb(cfg))
    mean, std = stats(row)
    # The course's alexnet and resnet18 keep the data's size: their small-input stem is made
    # for small images.
    size = None if row["source"] == "course" else row["size"]
    return Input(True, mean, std, size)


def size_problem(name: str, small_setting, height: int, width: int) -> str | None:
    """Why the model cannot take height x width inputs, in one line naming the size that
    works; None if it can (as far as the facts know: the builders also try one image)."""
    row, shown = lookup(name), f"{height}x{width}"
    if row is None:
        return None
    if name == "alexnet":
        small = small_input(small_setting, min(height, width))
        smallest = row["min_size"][small]
        if min(height, width) >= smallest:
            return None
        hint = (
            f"set data.resize: {smallest} (or more), or use cnn or resnet18"
            if small
            else "set model.small_input: true"
        )
        return (
            f"alexnet (small_input {str(small).lower()}) needs images of at least "
            f"{smallest}x{smallest} px, the data has {shown}; {hint}"
        )
    if row.get("fixed") and (height, width) != (row["size"], row["size"]):
        size = row["size"]
        return f"{name} needs {size}x{size} inputs, the data has {shown}; set data.resize: {size}"
    smallest = row.get("min_size")
    if isinstance(smallest, int) and min(height, width) < smallest:
        return (
            f"{name} needs inputs of at least {smallest}x{smallest} px, the data has {shown}; "
            f"set data.resize: {smallest} (or more)"
        )
    return None
