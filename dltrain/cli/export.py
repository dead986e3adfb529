"""`dltrain export`: a checkpoint as an ONNX or TorchScript file with a sidecar JSON, checked
against PyTorch on validation images before it is kept (dltrain/tools/export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dltrain.cli.app import SetOption, app, friendly, note, overrides, say
from dltrain.errors import DltrainError


@app.command("export")
@friendly
def export_(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint file (best.pt or last.pt).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")],
    file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="File to write (default: beside the checkpoint, best.onnx or best.ts)."
        ),
    ] = None,
    opset: Annotated[
        str | None, typer.Option("--opset", help="ONNX opset, 18 to 25 (default 18).")
    ] = None,
    set_: SetOption = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing file (never a dltrain checkpoint)."),
    ] = False,
) -> None:
    """Export a checkpoint for inference (normalization inside; float32 pixels in [0, 1])."""
    # Parsed here, not by click: a bad value is then one line and exit 1, like the others.
    if opset is not None and not opset.strip().isdigit():
        raise DltrainError(f"--opset {opset!r}: expected a whole number such as 18")
    from dltrain.tools.export import export_checkpoint

    # The CPU always (no --device): see export_checkpoint.
    result = export_checkpoint(
        ckpt, fmt, file, None if opset is None else int(opset), overrides(set_, None), force
    )
    size = Path(result["path"]).stat().st_size / 1e6
    kind = f"ONNX opset {result['opset']}" if fmt == "onnx" else "TorchScript"
    say(f"exported {ckpt} ({result['at']}) to {result['path']} ({kind}, {size:.1f} MB)")
    put, shape = result["input"], ", ".join(map(str, result["input"]["shape"]))
    say(
        f"input {put['name']!r}: float32 ({shape}) NCHW, values in [0, 1] (normalization is "
        f"inside the file); output {result['output']['name']!r}: one logit per class "
        f"({len(result['class_names'])})"
    )
    parity = result["parity"]
    if parity["source"] == "random":
        note(
            f"parity is checked on {parity['images']} random images in [0, 1] (seed "
            f"{parity['seed']}; the sidecar says so), as the data is not here: {parity['why']}"
        )
    batches = " and ".join(map(str, parity["batch_sizes"]))
    images = f"{parity['images']} {parity['source']} images"
    say(
        f"parity on {images} (batches of {batches}): max |logit difference| "
        f"{parity['max_abs_diff']:.1e} (limit {parity['tolerance']:.0e}), top-1 agreement "
        f"{parity['top1_agreement']:.0%}"
    )
    say(f"wrote {result['sidecar']}")
