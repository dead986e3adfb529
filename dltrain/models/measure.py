"""What a built model costs: parameters, multiply-accumulates of one image, and `dltrain
summary`'s per-layer figures (one image of zeros through the model in eval mode)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from dltrain.data import DataInfo
from dltrain.models.build import memory_for


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
