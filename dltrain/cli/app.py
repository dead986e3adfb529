"""The app, its shared options, and how our errors reach the user: one red line and an exit code.

The CLI is the only part of dltrain that prints or exits. torch is imported inside the commands
that train or evaluate, never at module level, so `dltrain --help` and `dltrain config …`
start fast.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from dltrain import __version__
from dltrain.errors import DltrainError, Interrupted
from dltrain.training import distributed


class _Group(TyperGroup):
    """Keeps the command line as the user gave it (`ctx.meta["argv"]`), for --nproc to pass on;
    tidies its commands' help."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)  # parsing consumes the list
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta.setdefault("argv", argv)
        return ctx

    def __init__(self, **attrs):
        super().__init__(**attrs)
        for command in self.commands.values():
            tidy(command)


def tidy(command) -> None:
    """One notation in every --help: paragraphs that the terminal wraps (docstrings wrap at
    the source's line length), and arguments named in upper case in the usage line, as our
    messages name them (CONFIG, RUN_DIRS)."""
    command.help = unwrapped(command.help)
    for param in command.params:
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()


def unwrapped(text: str | None) -> str | None:
    """A docstring's paragraphs each on one line: typer keeps the line breaks of every
    paragraph but the first, and they would break --help's lines mid-sentence."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split("\n")) for paragraph in paragraphs)


app = typer.Typer(
    cls=_Group,
    help="Train image classifiers from YAML configs.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(cls=_Group, help="Inspect configs and their schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# One definition per idea, so an option reads the same on every command that has it
# (tests/test_grammar.py checks the whole command line against these).
ConfigArgument = Annotated[Path, typer.Argument(help="YAML config file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: KEY=VALUE (dotted key), repeatable."),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")
]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out", "--run-dir", help="Folder for the outputs (--run-dir is the same option)."
    ),
]


def out_option(help: str):
    """--out where the output is not a run folder (a file, or a folder of pictures): the
    same name, its own help."""
    return Annotated[Path | None, typer.Option("--out", help=help)]


ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace a run that --out already holds.")
]
QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Print only the result: no progress, tables or details."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object (the result) and nothing else.")
]
NprocOption = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Train data-parallel in N processes on this machine (torch.distributed, started "
        "through torchrun); data.batch_size is per process.",
    ),
]


def mode(quiet: bool, as_json: bool) -> str:
    """How a command prints its result: "json", "quiet" or "normal"."""
    return "json" if as_json else "quiet" if quiet else "normal"


def print_json(result) -> None:
    """--json: the result as one line of JSON on stdout (rank 0 only, distributed)."""
    if distributed.is_main():
        print(json.dumps(result))


def overrides(set_: list[str] | None, device: str | None) -> list[str]:
    """--set values, with --device as one more override."""
    return list(set_ or []) + ([f"device={device}"] if device else [])


class _Console(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        reader_left()


def reader_left() -> None:
    """`dltrain eval ... | head -1`: the reader of stdout has gone. Stop quietly, as Unix tools
    do (exit 141, 128 + SIGPIPE); what is still to print goes nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(141)


def out() -> Console:
    """stdout; distributed, only rank 0 prints."""
    return _Console(highlight=False, quiet=not distributed.is_main())


def err() -> Console:
    return _Console(stderr=True, highlight=False, quiet=not distributed.is_main())


def count(number: int, noun: str) -> str:
    """`1 epoch`, `3 epochs`: a count with its noun in the right number."""
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def say(text: str, console: Console | None = None, style: str = "") -> None:
    """One plain line (no rich markup read in it), left for the terminal to wrap."""
    (console or out()).print(text, style=style, markup=False, soft_wrap=True)


def note(text: str) -> None:
    say(f"note: {text}", err(), "yellow")


def fail(error: DltrainError) -> None:
    stopped = isinstance(error, Interrupted)
    label, style = ("interrupted", "yellow") if stopped else ("error", "bold red")
    for line in str(error).splitlines() or [type(error).__name__]:
        say(f"{label}: {line}", err(), style)
    raise typer.Exit(error.exit_code)


def friendly(command):
    """Turn our errors into red lines and exit codes; anything else is a bug and keeps its
    traceback. Distributed, leave the process group as the outcome allows."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        together = False  # distributed: did every rank get here?
        try:
            result = command(*args, **kwargs)
            together = True
            return result
        except DltrainError as error:
            together = error.all_ranks
            fail(error)
        except KeyboardInterrupt:  # a training run handles Ctrl-C itself once it has started
            fail(Interrupted(stopped_by_ctrl_c(command.__name__), 130))
        except BrokenPipeError:  # a plain print() to a pipe whose reader left
            reader_left()
        finally:
            # No process group without torch.distributed. Ctrl-C can land while torch imports,
            # and a failed import leaves its submodules behind without torch: importing it
            # again here would fail on the half-made modules.
            if {"torch", "torch.distributed"} <= sys.modules.keys():
                distributed.stop(together)

    return wrapper


TRAINING = ("train", "finetune", "compare", "sweep")  # commands that start training runs


def stopped_by_ctrl_c(command: str) -> str:
    """What a Ctrl-C before any result means: training had not started, or (every other
    command: their files are written whole at the end) nothing was written."""
    if command in TRAINING:
        return "stopped by Ctrl-C before training started"
    return "stopped by Ctrl-C; nothing was written"


def _version(value: bool) -> None:
    if value:
        out().print(f"dltrain {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Train image classifiers from YAML configs."""
