"""Model builders `(info, cfg) -> nn.Module`; input channels and class count come from the data."""

from __future__ import annotations

import math

from torch import nn

from dltrain.config import ModelConfig
from dltrain.data import DataInfo
from dltrain.registry import Registry

MODELS: Registry = Registry("model")


def build_model(info: DataInfo, cfg: ModelConfig) -> nn.Module:
    return MODELS.get(cfg.name)(info, cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@MODELS.register("mlp")
def mlp(info: DataInfo, cfg: ModelConfig) -> nn.Module:
    """Flatten -> [Linear -> (BatchNorm) -> ReLU -> (Dropout)] per hidden size -> Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = info.channels * math.prod(info.image_size)
    for size in cfg.hidden:
        layers.append(nn.Linear(width, size))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(nn.ReLU(inplace=True))
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        width = size
    layers.append(nn.Linear(width, info.num_classes))
    return nn.Sequential(*layers)
