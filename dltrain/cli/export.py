"""`dltrain export`: a checkpoint as an ONNX or TorchScript file with a sidecar JSON, checked
against PyTorch on validation images before it is kept (dltrain/tools/export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from dltrain.cli.app import (
    JsonOption,
    QuietOption,
    SetOption,
    app,
    friendly,
    note,
    out_option,
    overrides,
    print_json,
    say,
)

Format = Literal["onnx", "torchscript"]  # tools/export.py's FORMATS (tests/test_grammar.py)


@app.command("export")
@friendly
def export_(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint file (best.pt or last.pt).")],
    fmt: Annotated[Format, typer.Option("--format", help="The file's format.")],
    file: out_option(
        "File to write (default: beside the checkpoint, best.onnx or best.ts)."
    ) = None,
    # No min/max here: export.check_request says the range, and why, in one line.
    opset: Annotated[
        int | None, typer.Option("--opset", help="ONNX opset, 18 to 25 (default 18).")
    ] = None,
    set_: SetOption = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing file (never a dltrain checkpoint)."),
    ] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Export a checkpoint for inference (normalization inside; float32 pixels in [0, 1])."""
    from dltrain.tools.export import export_checkpoint

    # The CPU always (no --device): see export_checkpoint.
    result = export_checkpoint(ckpt, fmt, file, opset, overrides(set_, None), force)
    size = Path(result["path"]).stat().st_size / 1e6
    parity = result["parity"]
    if parity["source"] == "random":
        note(
            f"parity is checked on {parity['images']} random images in [0, 1] (seed "
            f"{parity['seed']}; the sidecar says so), as the data is not here: {parity['why']}"
        )
    if as_json:
        print_json({**result, "bytes": Path(result["path"]).stat().st_size})
        return
    kind = f"ONNX opset {result['opset']}" if fmt == "onnx" else "TorchScript"
    say(f"exported {ckpt} ({result['at']}) to {result['path']} ({kind}, {size:.1f} MB)")
    if quiet:
        return
    put, shape = result["input"], ", ".join(map(str, result["input"]["shape"]))
    say(
        f"input {put['name']!r}: float32 ({shape}) NCHW, values in [0, 1] (normalization is "
        f"inside the file); output {result['output']['name']!r}: one logit per class "
        f"({len(result['class_names'])})"
    )
    batches = " and ".join(map(str, parity["batch_sizes"]))
    images = f"{parity['images']} {parity['source']} images"
    say(
        f"parity on {images} (batches of {batches}): max |logit difference| "
        f"{parity['max_abs_diff']:.1e} (limit {parity['tolerance']:.0e}), top-1 agreement "
        f"{parity['top1_agreement']:.0%}"
    )
    say(f"wrote {result['sidecar']}")
