"""`dltrain export`: (being written)."""

from dltrain.cli.app import app  # noqa: F401
