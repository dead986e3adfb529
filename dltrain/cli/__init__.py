"""The `dltrain` command line, by command group: app.py (the app, shared options, errors),
train.py (train, finetune, resume and the live report), sweep.py (compare, sweep), views.py
(eval, predict, runs, plot, config), and the tools around training: lr_find.py, summary.py,
export.py."""

# Each module adds its commands to `app`, in this order in --help.
from dltrain.cli import train  # noqa: F401

# isort: split
from dltrain.cli import sweep, views  # noqa: F401

# isort: split
from dltrain.cli import export, lr_find, summary  # noqa: F401
from dltrain.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
