"""The `dltrain` command line, by command group: app.py (the app, shared options, errors),
train.py (train, finetune, resume and the live report), sweep.py (compare, sweep), views.py
(eval, predict, runs, plot, config), and the tools around training: show.py, lr_find.py,
summary.py, export.py; reference.py renders them all as docs/commands.md."""

import importlib
import sys


def _stopped_while_starting() -> None:
    """Ctrl-C while Python imports the commands (the console script imports this package
    before `main` runs): one line and 130, as a Ctrl-C anywhere later, not a traceback."""
    sys.stderr.write("interrupted: stopped by Ctrl-C while dltrain was starting\n")
    raise SystemExit(130)


try:
    # Each module adds its commands to `app`, in this order in --help.
    for _module in ("train", "sweep", "views", "show", "export", "lr_find", "summary", "models"):
        importlib.import_module(f"dltrain.cli.{_module}")
    from dltrain.cli.app import app
except KeyboardInterrupt:
    _stopped_while_starting()

__all__ = ["app", "main"]


def main() -> None:
    import sys

    from dltrain.cli.app import reader_left

    try:
        app()  # Ctrl-C: friendly's one line in a command, typer's silent exit 130 outside one
    finally:
        try:  # what print() left in the buffer, for a reader that may have gone
            sys.stdout.flush()
        except BrokenPipeError:
            reader_left()
