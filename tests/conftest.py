import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dltrain.cli import app


@pytest.fixture
def cli():
    """Run the real CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config (dedented) under tmp_path and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


DIGITS_SMALL = """\
name: digits_small
seed: 0
device: cpu
data:
  dataset: digits
  val_split: 0.2
  batch_size: 32
model:
  name: mlp
  hidden: [64]
optim:
  name: adam
  lr: 3e-3
train:
  epochs: 2
"""


@pytest.fixture
def digits_config(write_config) -> Path:
    return write_config(DIGITS_SMALL)
