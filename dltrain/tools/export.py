"""`dltrain export`: a checkpoint as one self-contained inference file (ONNX or TorchScript) and
a sidecar JSON, kept only when it gives PyTorch's logits on real validation images (on seeded
random images when the checkpoint's data is not on this machine: the sidecar says which).

The file holds `Normalized`: the checkpoint's mean/std, then the model. It takes float32 pixels
in [0, 1], NCHW, with the checkpoint's channels and size, any batch size, and returns logits;
a program that loads it needs nothing from dltrain. It is written to a temporary name beside
the target, checked (`check_parity`) and only then moved into place: a file under the final
name has passed. The model is exported from the CPU (see `export_checkpoint`).
onnx, onnxruntime and onnxscript are optional (`pip install 'dltrain[export]'`) and imported
inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dltrain import __version__, files
from dltrain.data import NO_DOWNLOAD, make_loader
from dltrain.errors import DataNotFound, DltrainError
from dltrain.training import checkpoint

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}  # format -> the default file's suffix
# Opsets torch's (dynamo) ONNX exporter writes itself: 18 is its own, 19-25 go through
# onnxscript's converter. Others go through onnx's C converter: 26-28 failed here on alexnet
# and resnet18, and 16 and below fail while the exporter silently keeps 18.
OPSETS = range(18, 26)
DEFAULT_OPSET = 18  # the exporter's own; every onnxruntime we admit (>= 1.22) runs it
TOLERANCE = 1e-4  # largest |logit difference| a float32 export may show against PyTorch
PARITY_IMAGES = 64  # validation images the check runs, as one batch and then a batch of 1
PARITY_SEED = 0  # of the random images the check runs when the data is not here
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
EXTRA = "pip install 'dltrain[export]'"


class Normalized(nn.Module):
    """Pixels in [0, 1] -> (x - mean) / std -> the model: the normalization training used,
    inside the exported graph, so its users need not know or repeat it."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        # Not "mean"/"std": the ONNX exporter can give an op's output that name too, and a
        # duplicate name makes an invalid file (seen with optimize=False).
        column = (1, -1, 1, 1)  # one value per channel, broadcast over N, H and W
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(column))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(column))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.input_mean) / self.input_std)


def sidecar_path(path: Path) -> Path:
    """best.onnx -> best.onnx.json: an ONNX and a TorchScript export of one checkpoint can sit
    side by side."""
    return path.with_name(path.name + ".json")


def check_request(fmt: str, out: Path | None, opset: int | None) -> int | None:
    """Refuse a bad format, opset or --out folder before anything is loaded; returns the
    opset."""
    if fmt not in FORMATS:
        raise DltrainError(f"--format {fmt!r}: expected {' or '.join(FORMATS)}")
    if fmt == "torchscript" and opset is not None:
        raise DltrainError("--opset is for --format onnx; a TorchScript file has no opset")
    if fmt == "onnx":
        opset = DEFAULT_OPSET if opset is None else opset
        if opset not in OPSETS:
            raise DltrainError(
                f"--opset {opset}: expected {OPSETS.start} to {OPSETS.stop - 1} (the opsets "
                f"torch's ONNX exporter writes reliably); the default is {DEFAULT_OPSET}"
            )
        _need_onnx()
    if out is not None:
        if out.is_dir():
            raise DltrainError(f"--out {out} is a folder; name the file to write")
        if not out.parent.is_dir():
            raise DltrainError(f"--out {out}: the folder {out.parent} does not exist")
    return opset


def check_target(out: Path, ckpt: Path, force: bool) -> None:
    """Export writes over no file it did not make: an existing file (or sidecar) only with
    `force`, and never the checkpoint it reads or any other dltrain checkpoint, even then."""
    for path in (out, sidecar_path(out)):
        if not path.exists():
            continue
        if ckpt.exists() and path.samefile(ckpt):
            raise DltrainError(f"--out {path} is the checkpoint itself; name another file")
        if checkpoint.is_checkpoint(path):
            raise DltrainError(
                f"{path} is a dltrain checkpoint: export never writes over one, even with "
                "--force; name another file with --out"
            )
        if not force:
            raise DltrainError(
                f"{path} already exists; give --force to replace it, or name another file "
                "with --out"
            )


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError as err:
        raise DltrainError(
            f"--format onnx needs onnx, onnxruntime and onnxscript ({err.name} is missing): {EXTRA}"
        ) from None


def export_checkpoint(
    ckpt: str | Path,
    fmt: str,
    out: str | Path | None = None,
    opset: int | None = None,
    overrides: list[str] = (),
    force: bool = False,
) -> dict:
    """Export `ckpt` as `fmt` to `out` (default: beside it, best.onnx or best.ts) and write the
    sidecar; returns the sidecar's fields plus "path", "sidecar" and "at" (checkpoint.at).
    An existing file is replaced only with `force`, a checkpoint never. `overrides` are `--set`
    strings (e.g. data.root=... when the data moved: the parity check reads it). Always on the
    CPU: the file then runs anywhere, and the check compares the export, not two devices'
    arithmetic. A parity failure is an error and leaves nothing under `out`. The data is read,
    never downloaded unless `overrides` ask for it (see NO_DOWNLOAD)."""
    opset = check_request(fmt, None if out is None else Path(out), opset)
    out = Path(ckpt).with_suffix(FORMATS[fmt]) if out is None else Path(out)
    check_target(out, Path(ckpt), force)
    saved = checkpoint.open_saved(ckpt, [NO_DOWNLOAD, *overrides, "device=cpu"], purpose="export")
    model, _ = saved.model()
    info = saved.info
    net = Normalized(model, info.mean, info.std).eval()
    pixels, source = parity_pixels(saved)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        written = WRITERS[fmt](net, pixels, tmp, opset)
        parity = {**check_parity(net, load_exported(fmt, tmp), pixels), **source}
        if not parity["passed"]:
            raise DltrainError(_parity_failure(parity, out))
        os.replace(tmp, out)
    except BaseException as err:
        cause = files.os_error(err)  # a full disk, as torch or onnx report it
        if cause is None:
            raise
        raise files.write_failure(out, cause, "nothing was written there") from None
    finally:
        tmp.unlink(missing_ok=True)
    record = describe(saved, fmt, out, written, parity)
    files.write_json(sidecar_path(out), record)
    at = checkpoint.at(saved.payload)
    return {**record, "path": str(out), "sidecar": str(sidecar_path(out)), "at": at}


def parity_pixels(saved: checkpoint.Saved, count: int = PARITY_IMAGES) -> tuple[torch.Tensor, dict]:
    """The images the parity check runs and where they came from: {"source": "validation"},
    or, when the checkpoint's data is not found, `count` uniform random images in [0, 1] of
    its shape: {"source": "random", "seed": PARITY_SEED, "why": the data's error}. Logits of
    random images test the file's arithmetic as well; only the data's own quirks go unseen."""
    try:
        return validation_pixels(saved, count), {"source": "validation"}
    except DataNotFound as missing:
        info = saved.info
        generator = torch.Generator().manual_seed(PARITY_SEED)
        pixels = torch.rand((count, info.channels, *info.image_size), generator=generator)
        return pixels, {"source": "random", "seed": PARITY_SEED, "why": str(missing)}


def validation_pixels(saved: checkpoint.Saved, count: int = PARITY_IMAGES) -> torch.Tensor:
    """The first `count` validation images as the exported file takes them: float32 in [0, 1],
    NCHW, at the model's channels and size. The split is rebuilt from the checkpoint's own
    config and data, as `dltrain eval` does; the loader's normalized batches are mapped back
    (x * std + mean), which holds for in-memory and image-folder datasets alike."""
    from dltrain.training.session import model_data

    cfg, cpu = saved.cfg, torch.device("cpu")
    data, splits = model_data(cfg)
    saved.check_data(splits.info)
    taken, seen = [], 0
    for images, _ in make_loader(splits, "val", data, cpu):
        taken.append(images)
        seen += len(images)
        if seen >= count:
            break
    return splits.info.unnormalize(torch.cat(taken)[:count]).contiguous()


def _example(pixels: torch.Tensor) -> torch.Tensor:
    # torch.export fixes a dimension it sees at size 1: trace the batch at 2 at least.
    return pixels[:2] if len(pixels) >= 2 else pixels.repeat(2, 1, 1, 1)


def _write_onnx(net: nn.Module, pixels: torch.Tensor, path: Path, opset: int) -> dict:
    """torch's dynamo exporter (torch.export + onnxscript), batch dimension dynamic. The legacy
    TorchScript-based exporter (dynamo=False) is deprecated, and refuses alexnet's adaptive
    pooling at small inputs (6x6 output from 2x2 is "not a factor of input size")."""
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        net,
        (_example(pixels),),
        None,
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        verbose=False,  # else it prints its steps to stdout
    )
    got = program.model.opset_imports.get("")
    if got != opset:  # a failed conversion keeps the exporter's own opset without an error
        raise DltrainError(f"--opset {opset}: the exporter could only write opset {got}")
    # One file, weights inside (default: a separate .data file); fine below ONNX's 2 GB limit.
    program.save(path, external_data=False)
    return {"exporter": "torch.onnx.export (dynamo)", "opset": opset}


def _write_torchscript(net: nn.Module, pixels: torch.Tensor, path: Path, opset: None) -> dict:
    """torch.jit.script, not trace: the code is compiled as written, so no shape seen while
    tracing (the batch size) is baked in."""
    buffer = io.BytesIO()
    with _jit_quiet():
        torch.jit.save(torch.jit.script(net), buffer)
    # From memory: torch.jit.save to a path aborts the whole process when the disk is full.
    with open(path, "wb") as handle:
        handle.write(buffer.getbuffer())
    return {"exporter": "torch.jit.script"}


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript}


@contextlib.contextmanager
def _jit_quiet():
    """torch 2.14 warns that every torch.jit call is deprecated; the CLI alone speaks."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        yield


def load_exported(fmt: str, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file as a function pixels -> logits, run the way its users run it:
    onnxruntime (CPU) for ONNX, torch.jit.load for TorchScript."""
    if fmt == "torchscript":
        with _jit_quiet():
            module = torch.jit.load(str(path), map_location="cpu")
        return lambda pixels: module(pixels)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings go straight to the terminal
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
        reason = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise DltrainError(
            f"onnxruntime {onnxruntime.__version__} cannot load the exported file ({reason}); "
            f"try --opset {DEFAULT_OPSET}"
        ) from None
    return lambda pixels: torch.from_numpy(session.run(None, {INPUT_NAME: pixels.numpy()})[0])


def check_parity(
    net: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor
) -> dict:
    """PyTorch's logits against the exported file's on the same pixels: all of them as one
    batch, then the first alone (the batch dimension must really be dynamic). Passes when the
    largest |difference| is within TOLERANCE and every top-1 class agrees."""
    batches = [pixels, pixels[:1]] if len(pixels) > 1 else [pixels]
    diff, agree, total = 0.0, 0, 0
    with torch.inference_mode():
        for x in batches:
            want, got = net(x), run(x)
            if got.shape != want.shape:
                diff = float("inf")
                continue
            diff = max(diff, (want - got).abs().max().item())  # NaN makes it fail below
            agree += (want.argmax(1) == got.argmax(1)).sum().item()
            total += len(x)
    agreement = agree / total if total else 0.0
    return {
        "images": len(pixels),
        "batch_sizes": [len(x) for x in batches],
        "max_abs_diff": diff,
        "top1_agreement": agreement,
        "tolerance": TOLERANCE,
        "passed": diff <= TOLERANCE and agreement == 1.0,
    }


def _parity_failure(parity: dict, out: Path) -> str:
    return (
        f"parity check failed: the exported model's logits differ from PyTorch's by up to "
        f"{parity['max_abs_diff']:.2e} (limit {TOLERANCE:.0e}) and its top-1 class agrees on "
        f"{parity['top1_agreement']:.2%} of {parity['images']} {parity['source']} images "
        f"(needs 100%); {out} was not written"
    )


def describe(saved: checkpoint.Saved, fmt: str, out: Path, written: dict, parity: dict) -> dict:
    """The sidecar: what the file takes and gives, where it came from, and its parity check."""
    info = saved.info
    height, width = info.image_size
    versions = {"dltrain": __version__, "torch": torch.__version__.split("+")[0]}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return {
        "format": fmt,
        "file": out.name,
        **written,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "range": [0.0, 1.0],
            "layout": "NCHW",
            "shape": ["batch", info.channels, height, width],
            "channels": info.channels,
            "image_size": [height, width],
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", info.num_classes],
            "meaning": "logits in class_names order; softmax gives probabilities",
        },
        "normalization": {"inside": True, "mean": list(info.mean), "std": list(info.std)},
        "class_names": list(info.class_names),
        "model": saved.cfg.model.name,
        "dataset": saved.cfg.data.dataset,
        "checkpoint": str(saved.path),
        "sha256": files.file_sha256(saved.path),
        "epoch": saved.payload["epoch"],
        "parity": parity,
        "versions": versions,
    }
