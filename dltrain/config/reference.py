"""Views of the schema: every dotted key with its field (FIELDS), the keys a config may set
(KEYS), and the Markdown reference `dltrain config reference` prints."""

from typing import get_args

import yaml
from pydantic import BaseModel

from dltrain.config.schema import Config


def _section_of(annotation) -> type[BaseModel] | None:
    """The section a field holds: `Section`, or `Section | None` (a section off by default)."""
    members = [m for m in get_args(annotation) if m is not type(None)] or [annotation]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]
    return None


def _fields(model: type[BaseModel], parent: tuple = ()):
    """(path, field, whether it is a section) of every field; a section before the fields in it."""
    for name, field in model.model_fields.items():
        section = _section_of(field.annotation)
        yield (*parent, name), field, section is not None
        if section is not None:
            yield from _fields(section, (*parent, name))


# Every field by its path, sections too; and the fields that hold values, by dotted key (a
# section that is null by default holds one too: null, off).
FIELDS = {path: field for path, field, _ in _fields(Config)}
KEYS = {
    ".".join(path): field
    for path, field, section in _fields(Config)
    if not section or field.default is None
}


def reference_markdown() -> str:
    """The config reference as a Markdown table: key, default, description."""
    rows = ["| key | default | what it does |", "|---|---|---|"]
    for key, field in KEYS.items():
        default = field.get_default(call_default_factory=True)
        shown = yaml.safe_dump(default, default_flow_style=True, width=1000).removesuffix("...\n")
        rows.append(f"| `{key}` | `{shown.strip()}` | {field.description} |")
    return "\n".join(rows) + "\n"
