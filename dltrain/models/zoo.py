"""torchvision's and timm's classifiers by name: one builder per zoo, no code per architecture.

Each builds the library's model for the data's class count (timm: and channels; torchvision's
models take RGB, which the data layer makes of gray images), names its final layer in
`model.head_name`, and loads `model.pretrained` through the library's own API: torchvision's
weights enum (`get_model(name, weights=...)`) or timm's `create_model(pretrained=True)`.
"""

from __future__ import annotations

import contextlib
import io
import re

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights

from dltrain.config import ModelConfig
from dltrain.data import DataInfo
from dltrain.errors import DltrainError
from dltrain.models import catalog, facts
from dltrain.models.weights import find_head, load_file, replace_head, torch_hub_cache

# torchvision builders whose defaults do not suit training from scratch here: no auxiliary
# heads (their logits would come as a tuple), and the init they warn they will change to.
_SCRATCH = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def torchvision_model(info: DataInfo, cfg: ModelConfig, load: bool = True) -> nn.Module:
    """torchvision's `get_model(cfg.name)`: with ImageNet weights (the weights enum's entry the
    facts name), its head then replaced for the data's classes; else sized for them.
    `load=False` builds the architecture the weights would give, without them."""
    if info.channels != 3:
        raise DltrainError(
            f"{cfg.name} takes 3-channel images, the data has {info.channels}; the data layer "
            "repeats gray images to RGB for torchvision's models (models.needs_rgb)"
        )
    options = {"dropout": cfg.dropout} if cfg.dropout else {}
    if cfg.pretrained == "imagenet" and load:
        weights = get_model_weights(cfg.name)[facts.lookup(cfg.name)["weights"]]
        with torch_hub_cache(cfg.name, weights.url):
            model = _get(cfg.name, weights=weights, progress=False, **options)
        model.head_name = find_head(model, len(weights.meta["categories"]))
        replace_head(model, info.num_classes)
        return _quicker_batchnorm(model)
    options |= _SCRATCH.get(cfg.name, {})
    if cfg.pretrained == "imagenet":  # what torchvision's builders set for the weights
        options |= {"transform_input": True} if cfg.name in _SCRATCH else {}
        options |= (
            {"image_size": facts.lookup(cfg.name)["size"]} if cfg.name.startswith("vit_") else {}
        )
    model = _get(cfg.name, num_classes=info.num_classes, **options)
    model.head_name = find_head(model, info.num_classes)
    return load_file(_quicker_batchnorm(model), cfg)


def _quicker_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm momentum below PyTorch's 0.1 raised to it. MobileNetV3, EfficientNet and
    timm's TF ports use 0.01, made for ImageNet's 100,000s of steps: in a run of a few hundred
    the running statistics lag the weights and eval mode falls apart (digits, mobilenet_v3_small
    at 32 px, 6 epochs: 0.10 validation accuracy against 0.91 in train mode; with 0.1, 0.95)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.momentum or 1) < 0.1:
            module.momentum = 0.1
    return model


def _get(name: str, **options) -> nn.Module:
    try:
        return torchvision.models.get_model(name, **options)
    except TypeError as error:
        if "dropout" not in str(error):
            raise
        raise DltrainError(
            f"model.dropout: torchvision's {name} has no dropout setting; leave it at 0"
        ) from None


def timm_model(info: DataInfo, cfg: ModelConfig, load: bool = True) -> nn.Module:
    """timm's `create_model(name, num_classes=..., in_chans=...)`, with its default weights for
    `pretrained: imagenet` (timm adapts their head and first layer itself)."""
    try:
        import timm
    except ImportError:
        raise DltrainError(f"{cfg.name} is a timm model, and timm is not installed: "
                           f"{facts.TIMM_EXTRA}") from None  # fmt: skip
    arch = cfg.name.removeprefix(facts.TIMM)
    options = {"num_classes": info.num_classes, "in_chans": info.channels}
    options |= {"drop_rate": cfg.dropout} if cfg.dropout else {}
    if cfg.pretrained == "imagenet" and load:
        with _timm_weights(cfg.name, timm.get_pretrained_cfg(arch)):
            model = timm.create_model(arch, pretrained=True, **options)
    else:
        model = timm.create_model(arch, **options)
    model.head_name = _timm_head(model, info.num_classes)
    return load_file(_quicker_batchnorm(model), cfg)


def _timm_head(model: nn.Module, classes: int) -> str:
    """The name(s) of what timm's `get_classifier()` returns: one layer, or two for a model
    with a distillation head (joined by a comma, as `weights.in_head` reads them)."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    names = [name for name, module in model.named_modules() if any(module is h for h in heads)]
    return ",".join(names) if names and all(names) else find_head(model, classes)


@contextlib.contextmanager
def _timm_weights(name: str, pretrained_cfg):
    """Around timm's loading of its default weights: from the Hugging Face Hub's cache (most),
    or torch.hub's (those with a URL only); no network is one line saying what to put where."""
    repo = pretrained_cfg.hf_hub_id
    if not repo:
        with torch_hub_cache(name, pretrained_cfg.url) as path:
            yield path
        return
    from huggingface_hub import constants, try_to_load_from_cache

    found = [try_to_load_from_cache(repo, file) for file in ("model.safetensors",
                                                           "pytorch_model.bin")]  # fmt: skip
    cached = next((path for path in found if isinstance(path, str)), None)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield cached
    except DltrainError:
        raise
    except Exception as error:
        if cached:
            reason = (str(error).strip() or type(error).__name__).splitlines()[0]
            raise DltrainError(
                f"the cached weights {cached} cannot be read ({reason}); delete the folder "
                f"models--{repo.replace('/', '--')} in {constants.HF_HUB_CACHE} so that they "
                "are downloaded again"
            ) from error
        if not _network(error):
            raise
        raise DltrainError(
            f"ImageNet weights for {name} are not cached and could not be downloaded: put "
            f"model.safetensors of the Hugging Face Hub's {repo} into {constants.HF_HUB_CACHE} "
            f"(on a machine with network, `hf download {repo}` writes its models--"
            f"{repo.replace('/', '--')} folder into its cache: copy that folder), or use "
            "model.pretrained: none"
        ) from error


def _network(error: BaseException) -> bool:
    """Whether the hub's client failed for want of a file or a connection (its own error
    types, httpx's or requests', or an OSError) rather than a bug."""
    module = type(error).__module__.split(".")[0]
    return isinstance(error, OSError) or module in ("huggingface_hub", "httpx", "requests")


def check_input(model: nn.Module, info: DataInfo, name: str) -> None:
    """One image of zeros through the model (eval mode, no_grad; modes restored): a model that
    cannot take the data's size (a ViT's fixed patch grid, a net that pools 8x8 images to
    nothing) is refused now, in one line naming the size that works, not mid-training."""
    height, width = info.image_size
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, info.channels, height, width))
    except (RuntimeError, ValueError, AssertionError, IndexError) as error:
        if isinstance(error, RuntimeError) and re.search(r"out of memory|allocate", str(error)):
            raise  # build.memory_for's to say
        raise DltrainError(_size_message(model, info, name, error)) from None
    finally:
        for module, training in modes:
            module.training = training


def _size_message(model: nn.Module, info: DataInfo, name: str, error: BaseException) -> str:
    height, width = info.image_size
    if known := facts.size_problem(name, "auto", height, width):
        return known
    reason = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
    # The model is dropped after this: its copy on the meta device costs nothing to search.
    found = catalog.input_sizes(model.to("meta"), facts.lookup(name)["size"], info.channels)
    size = found["min_size"] or facts.lookup(name)["size"]
    works = (
        f"it takes {size}x{size}" if found["fixed"] else f"the smallest it takes is {size}x{size}"
    )
    if not found["min_size"]:
        works = f"its weights were made at {size}x{size}"
    return (
        f"{name} cannot take {height}x{width} inputs ({reason}); {works}: set data.resize: {size}"
    )
