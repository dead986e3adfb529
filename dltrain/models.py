"""Model builders `(info, cfg) -> nn.Module`; input channels and class count come from the data.

Every built model names its final Linear in `model.head_name`, so `replace_head` and the weight
loading treat all models alike. `cfg.pretrained` is "none", "imagenet" (alexnet and resnet18, via
torchvision's weights API and torch.hub's cache) or the path of a state-dict file (any model).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import AlexNet_Weights, ResNet18_Weights, WeightsEnum

from dltrain import checkpoint
from dltrain.config import ALEXNET_MIN_SIZE, ModelConfig
from dltrain.data import DataInfo
from dltrain.errors import DltrainError
from dltrain.registry import MODELS


def build_model(info: DataInfo, cfg: ModelConfig, weights: bool = True) -> nn.Module:
    """Build the model for the data. `weights=False` builds the same architecture without
    loading `cfg.pretrained` (for a model whose weights come from a dltrain checkpoint)."""
    if not weights and cfg.pretrained != "none":
        cfg = cfg.model_copy(update={"pretrained": "none"})
    with memory_for(f"the {cfg.name} model"):
        return MODELS.get(cfg.name)(info, cfg)


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def needs_rgb(cfg: ModelConfig) -> bool:
    """ImageNet weights expect 3 channels: the data layer repeats gray channels when this holds."""
    return cfg.pretrained == "imagenet"


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the final Linear (`model.head_name`) for a fresh one with `num_classes` outputs."""
    old = model.get_submodule(model.head_name)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = model.head_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


class MLP(nn.Sequential):
    """Flatten -> [Linear -> (BatchNorm) -> ReLU -> (Dropout)] per hidden size -> Linear `head`."""

    def __init__(self, info: DataInfo, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [info.channels * math.prod(info.image_size), *cfg.hidden]
        for width, size in pairwise(widths):
            layers.append(nn.Linear(width, size))
            layers += [nn.BatchNorm1d(size)] if cfg.batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            layers += [nn.Dropout(cfg.dropout)] if cfg.dropout else []
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], info.num_classes)


class CNN(nn.Sequential):
    """The course's CIFAR CNN: [Conv 3x3 (padding 1) -> (BatchNorm) -> ReLU -> MaxPool 2] per
    entry of `cfg.channels` -> Flatten -> (Dropout) -> Linear `head`. The head's input size
    follows from `info.image_size` (32 px: 32->16->8->4, so 128*4*4; 28 px: 28->14->7->3): no
    adaptive pooling averages features away. A side already down to 1 px (tiny inputs, or more
    blocks than the image can halve) is pooled with kernel 1, so the map never shrinks to
    nothing. Large images keep their detail and so get a large head: use resnet18."""

    def __init__(self, info: DataInfo, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [info.channels, *cfg.channels]
        height, width = info.image_size
        for in_channels, out_channels in pairwise(channels):
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            layers += [nn.BatchNorm2d(out_channels)] if cfg.batch_norm else []
            kernel = (min(2, height), min(2, width))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(kernel)]
            height, width = height // kernel[0], width // kernel[1]
        layers.append(nn.Flatten())
        layers += [nn.Dropout(cfg.dropout)] if cfg.dropout else []
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * height * width, info.num_classes)


MODELS.register("mlp")(lambda info, cfg: _finish(MLP(info, cfg), "head", cfg))
MODELS.register("cnn")(lambda info, cfg: _finish(CNN(info, cfg), "head", cfg))


@MODELS.register("alexnet")
def alexnet(info: DataInfo, cfg: ModelConfig) -> nn.Module:
    """torchvision's AlexNet (same state-dict keys; same parameter count at 3 channels and 1000
    classes), with `cfg.dropout` in the classifier and `info.channels` into the first conv.
    Small-input stem (`small_input`, auto under 64 px): the stock model needs 63 px (its 11x11
    stride-4 first conv shrinks 32 px to 7, and three 3x3 stride-2 max-pools would leave nothing).
    The stem makes that conv 3x3 stride 1 padding 1, same 64 outputs (64x3x11x11 -> 64x3x3x3);
    all else stays (32 px: 32->15->7->3, 28 px: 28->13->6->2; AdaptiveAvgPool then gives the 6x6
    the classifier expects). Smallest input with the stem: 15 px."""
    small = _small_input(info, cfg)
    smallest = ALEXNET_MIN_SIZE[small]
    if min(info.image_size) < smallest:  # refused now: the convs and pools would leave nothing
        height, width = info.image_size
        hint = "use cnn or resnet18" if small else "set model.small_input: true"
        raise DltrainError(
            f"alexnet (small_input {str(small).lower()}) needs images of at least "
            f"{smallest}x{smallest} px, the data has {height}x{width}; {hint}"
        )
    return _from_torchvision(partial(torchvision.models.alexnet, dropout=cfg.dropout), info, cfg)


@MODELS.register("resnet18")
def resnet18(info: DataInfo, cfg: ModelConfig) -> nn.Module:
    """torchvision's ResNet-18 with `fc` sized for the data and `info.channels` into conv1.
    Its small-input stem (for 32 px from scratch) makes conv1 3x3 stride 1 padding 1 and drops
    the max-pool, so layer1 sees 32x32 instead of 8x8. `cfg.dropout` and `cfg.batch_norm` are
    not used: ResNet always has BatchNorm and no dropout."""
    return _from_torchvision(torchvision.models.resnet18, info, cfg)


def _alexnet_stem(model: nn.Module, channels: int, small: bool) -> None:
    kernel, stride, padding = (3, 1, 1) if small else (11, 4, 2)
    model.features[0] = nn.Conv2d(channels, 64, kernel, stride, padding)


def _resnet_stem(model: nn.Module, channels: int, small: bool) -> None:
    kernel, stride, padding = (3, 1, 1) if small else (7, 2, 3)
    model.conv1 = nn.Conv2d(channels, 64, kernel, stride, padding, bias=False)
    # the init torchvision gives every ResNet conv
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if small:
        model.maxpool = nn.Identity()


# name -> (ImageNet weights, the final Linear, what sets the stem for (channels, small_input))
TORCHVISION = {
    "alexnet": (AlexNet_Weights.IMAGENET1K_V1, "classifier.6", _alexnet_stem),
    "resnet18": (ResNet18_Weights.IMAGENET1K_V1, "fc", _resnet_stem),
}


def _small_input(info: DataInfo, cfg: ModelConfig) -> bool:
    return min(info.image_size) < 64 if cfg.small_input == "auto" else bool(cfg.small_input)


def _from_torchvision(factory: Callable[..., nn.Module], info: DataInfo, cfg: ModelConfig):
    """Build `factory` for the data. ImageNet weights are loaded into the ImageNet-shaped model,
    then the head and (if small_input) the stem are replaced: the only fresh layers."""
    weights, head_name, set_stem = TORCHVISION[cfg.name]
    imagenet = cfg.pretrained == "imagenet"
    if imagenet and info.channels != 3:
        raise DltrainError(
            f"ImageNet weights for {cfg.name} need 3-channel images, the data has "
            f"{info.channels}; the data layer converts gray to RGB when pretrained is imagenet"
        )
    model = factory(num_classes=1000 if imagenet else info.num_classes)  # ImageNet has 1000
    if imagenet:
        model.head_name = head_name
        _load_state_dict(model, *_imagenet_state_dict(cfg.name, weights))
        replace_head(model, info.num_classes)
    small = _small_input(info, cfg)
    if small or info.channels != 3:
        set_stem(model, info.channels, small)
    return model if imagenet else _finish(model, head_name, cfg)


def _finish(model: nn.Module, head_name: str, cfg: ModelConfig) -> nn.Module:
    """Name the head and load `cfg.pretrained` when it is a file: a bare state dict or a dltrain
    checkpoint ({"model": state dict}), tensors only."""
    model.head_name = head_name
    if cfg.pretrained == "imagenet":
        raise DltrainError(
            f"model.pretrained: imagenet weights exist for alexnet and resnet18, not {cfg.name}; "
            "use none or the path of a state-dict file"
        )
    if cfg.pretrained == "none":
        return model
    path = cfg.pretrained
    if not os.path.isfile(path):
        raise DltrainError(f"model.pretrained: no such file: {path}")
    state = checkpoint.read(path, "model.pretrained: ")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DltrainError(f"model.pretrained: {path} does not hold a state dict")
    _load_state_dict(model, state, path)
    return model


def _imagenet_state_dict(arch: str, weights: WeightsEnum) -> tuple[dict, str]:
    """Load torchvision's ImageNet weights from torch.hub's cache, downloading them if absent."""
    file_name = os.path.basename(urlparse(weights.url).path)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, file_name)
    cached = os.path.exists(path)
    try:
        # torch.hub writes "Downloading: …" to stderr; the CLI alone speaks to the user.
        with contextlib.redirect_stderr(io.StringIO()):
            return weights.get_state_dict(progress=False, weights_only=True), path
    except Exception as error:
        if cached:  # torch.load raises many types for a damaged file
            reason = (str(error).strip() or type(error).__name__).splitlines()[0]
            raise DltrainError(
                f"the cached ImageNet weights {path} cannot be read ({reason}); "
                "delete the file so it is downloaded again"
            ) from error
        if not isinstance(error, (OSError, RuntimeError)):  # URLError and HTTPError are OSErrors
            raise
        raise DltrainError(
            f"ImageNet weights for {arch} are not cached and could not be downloaded: put "
            f"{file_name} (from {weights.url}) into {folder}{os.sep} (TORCH_HOME), "
            "or use model.pretrained: none"
        ) from error


def _load_state_dict(model: nn.Module, state: dict, source: str) -> None:
    """Load `state` into `model`. If any head tensor's shape differs (another class count), the
    whole head is skipped and keeps its fresh init; any other mismatch is an error."""
    own = model.state_dict()
    head = {key for key in own if key.startswith(model.head_name + ".")}
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


def count_macs(model: nn.Module, info: DataInfo) -> int:
    """Multiply-accumulates of one forward pass for one image at the data's size: half the FLOPs
    that torch's FlopCounterMode counts, which are those of matmuls and convolutions (a bias
    add, activation, pooling or normalization counts nothing). Weights, BatchNorm statistics,
    RNG and modes are left as they were (`_one_pass`)."""
    with memory_for("one image through the model"):
        flops, _ = _one_pass(model, _zeros(model, info), watch=False)
    return flops.get("", 0) // 2


def layer_summary(
    model: nn.Module, info: DataInfo, batch_size: int, precision: str = "float32"
) -> dict:
    """`dltrain summary`'s figures. Rows: one per leaf module, and one per module that holds
    parameters or runs counted ops itself, so that the rows add up to the totals; each with
    the output shape, parameters (trainable, frozen) and MACs for one image, and its share of
    the activation estimate: the outputs that are new tensors (`_activations`) for
    `batch_size` images at `precision` ("float32", "bfloat16", ...), roughly what backward
    keeps of a training batch."""
    with memory_for("one image through the model"):
        image = _zeros(model, info)
        flops, calls = _one_pass(model, image, watch=True)
    value_bytes = getattr(torch, precision).itemsize
    shapes, activations = _activations(model, image, calls, batch_size * value_bytes)
    modules = dict(model.named_modules())
    rows = []
    for name in [*shapes, *(name for name in modules if name not in shapes)]:  # as they ran
        module = modules[name]
        children = [_join(name, child) for child, _ in module.named_children()]
        own_flops = flops.get(name, 0) - sum(flops.get(child, 0) for child in children)
        own = list(module.parameters(recurse=False))
        if children and not own and not own_flops:
            continue  # a container: its layers have rows of their own
        trainable = sum(p.numel() for p in own if p.requires_grad)
        rows.append({
            "name": name, "type": type(module).__name__, "output": shapes.get(name),
            "params": sum(p.numel() for p in own), "trainable": trainable,
            "frozen": sum(p.numel() for p in own) - trainable,
            "macs": own_flops // 2, "activation_bytes": activations.get(name, 0),
        })  # fmt: skip
    keys = ("params", "trainable", "frozen", "macs", "activation_bytes")
    totals = {key: sum(row[key] for row in rows) for key in keys}
    totals.update(batch_size=batch_size, precision=precision, value_bytes=value_bytes)
    return {"input": tuple(image.shape), "rows": rows, "totals": totals}


# Dropout copies its input while training (a scaled output, and a mask), though not in the eval
# mode a counting pass runs in: the activation estimate counts its output as a new tensor.
_COPIES_WHEN_TRAINING = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _activations(
    model: nn.Module, image: torch.Tensor, calls: list, bytes_per_image_value: int
) -> tuple[dict, dict]:
    """Each module's first output shape, and the bytes its outputs take for a batch: those in
    memory no earlier output (or the input) holds. An in-place ReLU, a view (Flatten), Identity
    or a container handing on its last layer's output adds nothing; Dropout counts (see
    `_COPIES_WHEN_TRAINING`). A module called twice (ResNet's ReLU) is judged per call."""
    modules = dict(model.named_modules())
    shapes, activations, held = {}, {}, {_storage(image)}
    for name, output in calls:
        copies = isinstance(modules[name], _COPIES_WHEN_TRAINING) and modules[name].p > 0
        new = _storage(output) not in held or copies
        held.add(_storage(output))
        shapes.setdefault(name, tuple(output.shape))
        size = output[0].numel() * bytes_per_image_value if new else 0
        activations[name] = activations.get(name, 0) + size
    return shapes, activations


def _one_pass(model: nn.Module, image: torch.Tensor, watch: bool) -> tuple[dict, list]:
    """`image` through the model under FlopCounterMode: FLOPs per module (by `named_modules`
    name, "" the whole model) and, if `watch`, (name, output) of every module call in the
    order they ended (held, so that no later tensor reuses an output's memory). Eval mode and
    no_grad: BatchNorm's running statistics and the weights stay as they are and dropout draws
    no random numbers; each module's own mode is restored afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    calls: list[tuple[str, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(partial(_hold, calls, name))
        for name, module in (model.named_modules() if watch else ())
    ]
    modes = [(module, module.training) for module in model.modules()]
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes:
            module.training = training
    # FlopCounterMode names a module by the model's class name and then its dotted path.
    counts = counter.get_flop_counts().items()
    flops = {name.partition(".")[2]: sum(c.values()) for name, c in counts if name != "Global"}
    return flops, calls


def _zeros(model: nn.Module, info: DataInfo) -> torch.Tensor:
    """One image of zeros at the data's size, on the model's device and in its dtype."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(1, info.channels, *info.image_size, device=device, dtype=dtype)


def _hold(calls: list, name: str, module: nn.Module, args, output) -> None:
    if isinstance(output, torch.Tensor):
        calls.append((name, output))


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
