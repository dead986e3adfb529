"""Where and how training runs: device, seeds, threads, precision, memory format, signals."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dltrain.config import Config
from dltrain.errors import DltrainError
from dltrain.training import distributed


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; asking for an absent device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DltrainError(
                f"device {name!r} was asked for but CUDA is not available on this machine; "
                "use --device cpu or device: auto"
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DltrainError(
                f"device {name!r} was asked for but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise DltrainError("device 'mps' was asked for but MPS is not available; use --device cpu")
    return torch.device(name)


def join(cfg: Config) -> torch.device:
    """Under torchrun, this process's device in the process group (joined once; "auto" takes
    the GPU when there is one)."""
    return distributed.start(resolve_device(cfg.device).type)


def start(cfg: Config) -> torch.device:
    """The device a run trains on (under torchrun, this process's, in the process group), with
    threads, determinism and seeds set. Every rank takes the same seed: identical initial
    weights, splits and shuffles."""
    device = join(cfg) if distributed.launched() else resolve_device(cfg.device)
    set_threads()
    if cfg.train.deterministic:
        # cuBLAS needs this workspace setting to be deterministic; set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    torch.backends.cudnn.benchmark = not cfg.train.deterministic
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return device


@dataclass
class Precision:
    """One code path for every precision: an autocast context factory (a no-op for fp32) and
    a GradScaler (enabled only for fp16, where gradients can underflow)."""

    autocast: Callable = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    name: str = "float32"


def precision_tools(device: torch.device, precision: str) -> Precision:
    if precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if use_bf16 else None
    else:
        dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]
    # Disabled autocast still costs a context switch per step: use a no-op context for fp32.
    autocast = (
        functools.partial(torch.autocast, device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Precision(autocast, scaler, str(dtype or torch.float32).removeprefix("torch."))


def set_threads() -> None:
    """Use the cores this process may run on (containers often allow fewer than the host
    has), unless OMP_NUM_THREADS says otherwise."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(distributed.usable_cores())


def apply_speedups(
    cfg: Config, model: nn.Module, device: torch.device, loaders, compile_ok: bool = True
) -> nn.Module:
    """channels_last and torch.compile where they pay. Measured: channels_last 1.24x for the
    course CNN on 2 CPU cores (bench/cpu_variants.py); torch.compile 0.70x there, and on an
    H200 0.86x (resnet18) and 0.83x (CNN) per epoch after 44 s and 12 s of compiling
    (bench/gpu.py --compile true|false). So `auto` means channels_last for conv nets on CPU
    and CUDA, and no compile (opt-in: `train.compile: true`). Returns the module to call;
    parameters and state dict stay those of `model`."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    wanted = cfg.train.channels_last
    if has_conv and (device.type in ("cpu", "cuda") if wanted == "auto" else wanted):
        model.to(memory_format=torch.channels_last)
        for loader in loaders:
            loader.memory_format = torch.channels_last
    wanted = cfg.train.compile
    if compile_ok and wanted is True:
        return torch.compile(model)
    return model


class StopSignal:
    """Ctrl-C (SIGINT) and SIGTERM ask training to stop (engine.Channel reads `signum`).

    Further signals are ignored while the run saves its checkpoint: the save finishes and
    nothing is corrupted. Handlers can only be installed from the main thread; elsewhere
    (e.g. a worker thread) the default behaviour stays.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
