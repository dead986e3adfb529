"""`dltrain train`, `finetune` and `--resume` (their live report: report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dltrain.cli.app import (
    DeviceOption,
    ForceOption,
    JsonOption,
    NprocOption,
    OutOption,
    QuietOption,
    SetOption,
    app,
    friendly,
    note,
    out,
    overrides,
)
from dltrain.cli.report import TrainReport
from dltrain.errors import DltrainError
from dltrain.training import distributed


def _mode(quiet: bool, as_json: bool) -> str:
    return "json" if as_json else "quiet" if quiet else "normal"


@app.command()
@friendly
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="YAML config file.")] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    out_dir: OutOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue a run: its folder (last.pt) or a checkpoint."),
    ] = None,
    nproc: NprocOption = 1,
) -> None:
    """Train a model from a YAML config, or continue a run with --resume."""
    from dltrain.config import load_config

    changes, mode = overrides(set_, device), _mode(quiet, as_json)
    if resume is None and config is None:
        raise DltrainError("give a config file to train, or --resume RUN_DIR to continue a run")
    if nproc > 1:
        if resume is None:
            load_config(config, changes)  # a bad config fails once, here
        elif not resume.exists():
            raise DltrainError(f"--resume {resume}: no such run folder or checkpoint")
        _launch(ctx, nproc)
    elif resume is not None:
        _resume(resume, config, out_dir, changes, mode)
    else:
        cfg = load_config(config, changes)
        folder, made = _run_folder(cfg, out_dir, force)
        run(cfg, folder, mode, new=True, made=made)


def _launch(ctx: typer.Context, nproc: int) -> None:
    """`--nproc N`: the user's own command line, less --nproc, in N processes started through
    torchrun's launcher."""
    if distributed.launched():
        raise DltrainError(
            "--nproc starts its own processes; under torchrun, leave it out (torchrun's "
            "--nproc-per-node says how many)"
        )
    args, argv = [], iter(ctx.meta["argv"])
    for arg in argv:
        if arg == "--nproc":
            next(argv, None)  # and its value
        elif not arg.startswith("--nproc="):
            args.append(arg)
    code = distributed.launch(nproc, args)
    if code:
        raise typer.Exit(code)


def _run_folder(cfg, run_dir: Path | None, force: bool) -> tuple[Path, tuple[Path, ...]]:
    """The new run's folder, and the folders made for it (fit takes them away again if the run
    fails before its first epoch). Under torchrun, rank 0 makes it and tells the others."""
    from dltrain.reporting.runs import made_run_dir
    from dltrain.training.runtime import join

    if not distributed.launched():
        return made_run_dir(cfg, run_dir, force=force)
    join(cfg)
    return distributed.from_main(lambda: made_run_dir(cfg, run_dir, force=force))


def run(cfg, folder: Path, mode: str = "normal", **kwargs) -> None:
    """engine.fit with the live report (fit draws the run's curves.png as it ends)."""
    report = TrainReport(out(), mode)
    report.begin()  # on a terminal, at once: the imports and the data take seconds
    try:
        from dltrain.training.engine import fit

        fit(cfg, folder, [report], **kwargs)
    finally:
        report.close()


def _resume(target: Path, config: Path | None, run_dir: Path | None, changes: list[str], mode):
    if config is not None or run_dir is not None:
        raise DltrainError(
            "--resume continues a run in its own folder with its saved config; drop CONFIG and "
            "--out (use --set, e.g. --set train.epochs=20, to change values)"
        )
    from dltrain.training.resume import plan

    todo = plan(target, changes)
    for text in todo.notes:
        note(text)
    if todo.action != "done":
        run(todo.cfg, todo.folder, mode, resume=todo.payload, parent=todo.parent)


@app.command()
@friendly
def finetune(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="YAML config of the new task (its data).")],
    source: Annotated[
        str, typer.Option("--from", help="A dltrain checkpoint, or imagenet (torchvision).")
    ],
    set_: SetOption = None,
    device: DeviceOption = None,
    out_dir: OutOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
    nproc: NprocOption = 1,
) -> None:
    """Train on a new dataset starting from a checkpoint's (or ImageNet) weights."""
    from dltrain.config import load_config

    cfg = load_config(config, overrides(set_, device))
    if nproc > 1:
        _launch(ctx, nproc)
        return
    from dltrain.training.finetune import from_source

    cfg, parent = from_source(cfg, source)
    folder, made = _run_folder(cfg, out_dir, force)
    run(cfg, folder, _mode(quiet, as_json), parent=parent, new=True, made=made)
