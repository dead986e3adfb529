"""The course's four models: the MLP and the CNN, and torchvision's AlexNet and ResNet-18 with
small-input stems. Input channels and class count come from the data."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from itertools import pairwise

import torchvision
from torch import nn
from torchvision.models import AlexNet_Weights, ResNet18_Weights

from dltrain.config import ModelConfig
from dltrain.data import DataInfo
from dltrain.errors import DltrainError
from dltrain.models import facts
from dltrain.models.weights import load_file, load_state_dict, replace_head, torch_hub_cache
from dltrain.registry import MODELS


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


MODELS.register("mlp")(lambda info, cfg: _named(MLP(info, cfg), "head", cfg))
MODELS.register("cnn")(lambda info, cfg: _named(CNN(info, cfg), "head", cfg))


def _named(model: nn.Module, head_name: str, cfg: ModelConfig) -> nn.Module:
    model.head_name = head_name
    return load_file(model, cfg)


@MODELS.register("alexnet")
def alexnet(info: DataInfo, cfg: ModelConfig) -> nn.Module:
    """torchvision's AlexNet (same state-dict keys; same parameter count at 3 channels and 1000
    classes), with `cfg.dropout` in the classifier and `info.channels` into the first conv.
    Small-input stem (`small_input`, auto under 64 px): the stock model needs 63 px (its 11x11
    stride-4 first conv shrinks 32 px to 7, and three 3x3 stride-2 max-pools would leave nothing).
    The stem makes that conv 3x3 stride 1 padding 1, same 64 outputs (64x3x11x11 -> 64x3x3x3);
    all else stays (32 px: 32->15->7->3, 28 px: 28->13->6->2; AdaptiveAvgPool then gives the 6x6
    the classifier expects). Smallest input with the stem: 15 px."""
    if problem := facts.size_problem("alexnet", cfg.small_input, *info.image_size):
        raise DltrainError(problem)  # refused now: the convs and pools would leave nothing
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


# name -> (ImageNet weights, the final Linear, what sets the stem for (channels, small_input));
# which models have weights, and their preprocessing, is facts.COURSE's to say.
TORCHVISION = {
    "alexnet": (AlexNet_Weights.IMAGENET1K_V1, "classifier.6", _alexnet_stem),
    "resnet18": (ResNet18_Weights.IMAGENET1K_V1, "fc", _resnet_stem),
}


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
        with torch_hub_cache(cfg.name, weights.url) as path:
            state = weights.get_state_dict(progress=False, weights_only=True)
        load_state_dict(model, state, path)
        replace_head(model, info.num_classes)
    small = facts.small_input(cfg.small_input, min(info.image_size))
    if small or info.channels != 3:
        set_stem(model, info.channels, small)
    return model if imagenet else _named(model, head_name, cfg)
