"""configs/schema.json is current, and every config points editors at it."""

import json
import os
from pathlib import Path

import pytest

from dltrain.config import Config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SCHEMA = CONFIGS / "schema.json"
YAMLS = sorted(CONFIGS.rglob("*.yaml"))


def test_committed_schema_is_current():
    assert json.loads(SCHEMA.read_text()) == Config.model_json_schema(), (
        "configs/schema.json is out of date with dltrain/config/schema.py; regenerate it with: "
        "dltrain config schema > configs/schema.json"
    )


def test_there_are_configs_to_check():
    assert len(YAMLS) >= 10 and any(path.parent.name == "smoke" for path in YAMLS)


@pytest.mark.parametrize("path", YAMLS, ids=lambda path: str(path.relative_to(CONFIGS)))
def test_config_starts_with_schema_line(path: Path):
    target = Path(os.path.relpath(SCHEMA, path.parent)).as_posix()
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# yaml-language-server: $schema={target}", (
        f"{path.name}: the first line should be '# yaml-language-server: $schema={target}'"
    )
    assert (path.parent / target).is_file()


def test_docs_config_reference_is_current():
    from dltrain.config import reference_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "reference.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    current = page[page.index(start) + len(start) : page.index(end)]
    assert current == reference_markdown(), (
        "docs/reference.md is stale: replace the table between its config-reference markers "
        "with the output of `dltrain config reference`"
    )
