"""Data-parallel training on torch.distributed: the process group, and decisions all ranks share.

torchrun (or `dltrain train --nproc N`, through its launcher) starts one process per device and
sets RANK, WORLD_SIZE and LOCAL_RANK; each trains on its shard of every batch; only rank 0 prints
and writes. Every choice that ends or changes the loop (a NaN, Ctrl-C, early stopping) is agreed
through a collective, so no rank waits at a barrier the others never reach. Without those variables
all this is a no-op. Torch is imported inside the functions: the CLI asks `is_main()` first."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from dltrain.errors import DltrainError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 prints and writes; torchrun sets RANK before the process group exists."""
    return os.environ.get("RANK", "0") == "0"


def usable_cores() -> int:
    """The cores this process may run on (a container often allows fewer than the host has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start(kind: str) -> torch.device:
    """Join torchrun's process group: NCCL, one GPU per process (LOCAL_RANK); gloo on the CPU.
    `kind`: the device type the config resolves to (runtime.join, its one caller)."""
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "mps":
        raise DltrainError("distributed training runs on CUDA or the CPU, not mps; use --device")
    nccl = kind == "cuda"
    if nccl and local_rank >= torch.cuda.device_count():
        raise DltrainError(
            f"process {local_rank} on this node has no GPU: the node has "
            f"{torch.cuda.device_count()}; start at most that many processes per node"
        )
    device = torch.device("cuda", local_rank) if nccl else torch.device("cpu")
    if nccl:
        torch.cuda.set_device(device)
    if not _dist().is_initialized():
        _dist().init_process_group("nccl" if nccl else "gloo", device_id=device if nccl else None)
    return device


def stop(together: bool = True) -> None:
    """Leave the process group. `together` (all ranks got here: success, or an agreed stop) waits
    for the others first: a rank tearing down while rank 0 still writes can abort at exit (seen
    with gloo), and the launcher then kills rank 0 mid-write. After an error on this rank alone
    there is no waiting: exiting lets the launcher stop the others."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        if together:
            with contextlib.suppress(RuntimeError):  # a peer already gone
                dist.barrier()
        # The DDP wrapper holds the group too: free it now, not at interpreter exit, where
        # gloo's worker threads can abort the process ("terminate called ...", seen here).
        gc.collect()
        dist.destroy_process_group()


def _reduce(values: list[int], minimum: bool = False) -> list[int]:
    """Integers summed (or their minimum taken) over all ranks, in one collective."""
    import torch

    dist = _dist()
    # NCCL reduces only tensors on the process's GPU; gloo those on the CPU.
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN if minimum else dist.ReduceOp.SUM)
    return tensor.tolist()


def all_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over all ranks, in place."""
    if active():
        for tensor in tensors:
            _dist().all_reduce(tensor)


def sum_ints(*values: int) -> list[int]:
    return _reduce(list(values)) if active() else list(values)


def agree(bad_step: int | None, stop: int) -> tuple[int | None, int]:
    """One collective for both loop-ending events: the first step any rank saw a NaN/Inf loss,
    and the strongest stop request of any rank (0: none; larger codes win)."""
    if not active():
        return bad_step, stop
    no_step = 2**62  # "no NaN seen": above every step, in the MIN-reduction
    first_bad, stop_flag = _reduce([no_step if bad_step is None else bad_step, -stop], minimum=True)
    return (None if first_bad == no_step else first_bad), -stop_flag


def from_main(compute: Callable[[], T]) -> T:
    """Rank 0 computes, every rank gets the result. A DltrainError on rank 0 is raised on every
    rank (only rank 0 prints it), so none waits for an answer that never comes."""
    if not active():
        return compute()
    box: list = [None, None]  # [result, error]
    if _dist().get_rank() == 0:
        try:
            box[0] = compute()
        except DltrainError as err:
            box[1] = err
    _dist().broadcast_object_list(box, src=0)
    if box[1] is not None:
        box[1].all_ranks = True
        raise box[1]
    return box[0]


def wrap(model: torch.nn.Module, device: torch.device, sync_batchnorm: bool) -> torch.nn.Module:
    """The module that trains: DDP (SyncBatchNorm first, if asked) when several processes run."""
    if not active():
        return model
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if sync_batchnorm and not all(isinstance(m, nn.SyncBatchNorm) for m in norms):
        if device.type != "cuda":
            raise DltrainError(
                "train.sync_batchnorm: PyTorch's SyncBatchNorm runs on CUDA only; set "
                "train.sync_batchnorm: false for distributed training on the CPU"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def launch(nproc: int, args: list[str]) -> int:
    """Run `python -m dltrain <args>` in `nproc` local processes through torchrun's launcher
    (standalone rendezvous). Returns 0, or the first failed one's exit code (rank 0 said why)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would set OMP_NUM_THREADS=1 with a banner; share the cores out instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    # The elastic agent logs each failed worker as a long report; our processes say it better.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "dltrain", *args]))
    except ChildFailedError as err:
        code = err.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code
    except SignalException as err:  # Ctrl-C or SIGTERM here: the workers got it too, and saved
        return 128 + int(err.sigval)
    return 0
