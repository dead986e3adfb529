"""Heads and weights: every built model names its final layer in `model.head_name`, so that
replacing the head, loading weights, freezing the backbone and the head's learning rate treat
all models alike. Weights come from a file (`model.pretrained: PATH`) or from the library's
ImageNet weights, through torch.hub's cache (torchvision) or the Hugging Face Hub's (timm).
"""

from __future__ import annotations

import contextlib
import io
import os
from urllib.parse import urlparse

import torch
from torch import nn

from dltrain import files
from dltrain.config import ModelConfig
from dltrain.errors import DltrainError


def in_head(name: str, head_name: str) -> bool:
    """Whether a parameter or module name lies in the head: `head_name` names one module, or
    several joined by commas (a timm model with a distillation head has two)."""
    return any(name == head or name.startswith(head + ".") for head in head_name.split(","))


def find_head(model: nn.Module, classes: int) -> str:
    """The name of the layer that gives the logits: the last Linear (or 1x1 Conv2d, as in
    SqueezeNet) registered with `classes` outputs. torchvision's models register their
    classifier last; a model that does not is refused, not guessed."""
    found = [
        name
        for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) and module.out_features == classes)
        or (isinstance(module, nn.Conv2d) and module.out_channels == classes)
    ]
    if not found:
        raise DltrainError(
            f"{type(model).__name__}: no final Linear or Conv2d layer with {classes} outputs "
            "was found to replace; this model cannot be used as a classifier here"
        )
    return found[-1]


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the final layer (`model.head_name`: a Linear, or SqueezeNet's 1x1 Conv2d) for a
    fresh one with `num_classes` outputs, on the old one's device and dtype."""
    old = model.get_submodule(model.head_name)
    bias = old.bias is not None
    if isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, bias=bias)
    else:
        new = nn.Linear(old.in_features, num_classes, bias=bias)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = model.head_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def load_file(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Load `cfg.pretrained` when it is a file: a bare state dict or a dltrain checkpoint
    ({"model": state dict}), tensors only. `model.head_name` must be set."""
    if cfg.pretrained in ("none", "imagenet"):
        return model
    path = cfg.pretrained
    if not os.path.isfile(path):
        raise DltrainError(f"model.pretrained: no such file: {path}")
    state = files.read(path, "model.pretrained: ")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DltrainError(f"model.pretrained: {path} does not hold a state dict")
    load_state_dict(model, state, path)
    return model


@contextlib.contextmanager
def torch_hub_cache(what: str, url: str):
    """Around loading ImageNet weights through torch.hub's cache (torchvision's weights API,
    and timm's weights that have a URL): downloads them if absent; a damaged file or no
    network is one line saying which file to put where."""
    file_name = os.path.basename(urlparse(url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, file_name)
    cached = os.path.exists(path)
    try:
        # torch.hub writes "Downloading: …" to stderr; the CLI alone speaks to the user.
        with contextlib.redirect_stderr(io.StringIO()):
            yield path
    except DltrainError:
        raise
    except Exception as error:
        if cached:  # torch.load raises many types for a damaged file
            raise DltrainError(
                f"the cached ImageNet weights {path} cannot be read ({_reason(error)}); "
                "delete the file so it is downloaded again"
            ) from error
        if not isinstance(error, (OSError, RuntimeError)):  # URLError and HTTPError are OSErrors
            raise
        raise DltrainError(
            f"ImageNet weights for {what} are not cached and could not be downloaded: put "
            f"{file_name} (from {url}) into {folder}{os.sep} (TORCH_HOME), "
            "or use model.pretrained: none"
        ) from error


def _reason(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def load_state_dict(model: nn.Module, state: dict, source: str) -> None:
    """Load `state` into `model`. If any head tensor's shape differs (another class count), the
    whole head is skipped and keeps its fresh init; any other mismatch is an error."""
    own = model.state_dict()
    head = {key for key in own if in_head(key, model.head_name)}
    if any(key in state and state[key].shape != own[key].shape for key in head):
        own = {key: value for key, value in own.items() if key not in head}
        state = {key: value for key, value in state.items() if key not in head}
    problems = [f"missing {key}" for key in sorted(own.keys() - state.keys())]
    problems += [f"unexpected {key}" for key in sorted(state.keys() - own.keys())]
    problems += [
        f"{key} is {tuple(state[key].shape)}, model has {tuple(own[key].shape)}"
        for key in sorted(own.keys() & state.keys())
        if state[key].shape != own[key].shape
    ]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise DltrainError(
            f"{source} does not fit this {type(model).__name__} model: "
            f"{'; '.join(problems[:3])}{more}"
        )
    model.load_state_dict(state, strict=False)
