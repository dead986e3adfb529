"""The wheel that `pip install .` (or `pipx install .`) builds holds the whole package."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_holds_every_module(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "dltrain", source / "dltrain", ignore=skip)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("dltrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "dltrain").rglob("*.py")}
    assert "dltrain/data/core.py" in modules
    assert sorted(modules - names) == []
    assert "dltrain/models/zoo.json" in names  # the model facts: config checking reads them
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dltrain = dltrain.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
