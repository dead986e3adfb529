"""`dltrain lr-find`: (being written)."""

from dltrain.cli.app import app  # noqa: F401
