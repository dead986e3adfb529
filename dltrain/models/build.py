"""`build_model`: the model a config names, for the data (input channels, class count and
size come from it). The course's four are registered in `MODELS` (course.py); torchvision's
and timm's classifiers have one builder per zoo (zoo.py). Whichever it is, the model names
its final layer in `model.head_name`, and `cfg.pretrained` is "none", "imagenet" (the models
that facts.py says have ImageNet weights) or the path of a state-dict file (any model).
"""

from __future__ import annotations

import contextlib
import re

from torch import nn

from dltrain.config import ModelConfig
from dltrain.data import DataInfo
from dltrain.errors import DltrainError
from dltrain.models import course, facts, zoo
from dltrain.registry import MODELS

__all__ = ["MODELS", "build_model", "course", "memory_for"]  # course: registers the four

ZOOS = {"torchvision": zoo.torchvision_model, "timm": zoo.timm_model}  # source -> builder


def build_model(info: DataInfo, cfg: ModelConfig, weights: bool = True) -> nn.Module:
    """Build the model for the data. `weights=False` builds the same architecture without
    loading `cfg.pretrained` (for a model whose weights come from a dltrain checkpoint).
    A zoo model that cannot take the data's image size is refused here, in one line."""
    if cfg.pretrained == "imagenet" and (problem := facts.imagenet_problem(cfg.name)):
        raise DltrainError(f"model.pretrained: {problem}")
    source = facts.source(cfg.name) if facts.lookup(cfg.name) else "course"
    # A zoo model keeps `imagenet` without loading it: some weights shape the architecture
    # (googlenet's input transform, vit_h_14's 518 px grid), which a checkpoint must match.
    if (
        not weights
        and cfg.pretrained != "none"
        and (source == "course" or cfg.pretrained != "imagenet")
    ):
        cfg = cfg.model_copy(update={"pretrained": "none"})
    with memory_for(f"the {cfg.name} model"):
        if source == "course":
            return MODELS.get(cfg.name)(info, cfg)
        model = ZOOS[source](info, cfg, load=weights)
        zoo.check_input(model, info, cfg.name)
        return model


@contextlib.contextmanager
def memory_for(what: str):
    """An allocation the machine refuses (absurd sizes such as model.hidden [1e12] or
    data.resize 1000000) is one line, not the allocator's traceback. Caught where it happens,
    not checked up front: what fits depends on the machine, and the allocator knows."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        text = str(err)
        if not isinstance(err, MemoryError) and not re.search(_REFUSED, text):
            raise
        size = re.search(r"allocate (\d+) bytes", text)
        needs = f" ({int(size.group(1)) / 2**30:,.1f} GiB at once)" if size else ""
        raise DltrainError(
            f"{what} does not fit in this machine's memory{needs}: check the sizes in "
            "model.hidden, model.channels and data.resize"
        ) from None


# How torch's allocators say no: the CPU's, CUDA's and MPS's out-of-memory errors.
_REFUSED = r"can't allocate memory|out of memory"
