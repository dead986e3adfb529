"""The command reference (docs/commands.md), generated from the commands themselves: the same
introspection Typer's --help reads, so the page and --help cannot disagree.

tests/test_grammar.py walks the same commands to check that options read alike everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import typer


def commands() -> Iterator[tuple[str, object]]:
    """Every command as ("dltrain eval", its command object), groups walked in --help's order
    (the group itself, e.g. `dltrain config`, is not one)."""
    from dltrain.cli import app

    def walk(path: str, group) -> Iterator[tuple[str, object]]:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(f"{path} {name}", command)
            else:
                yield f"{path} {name}", command

    yield from walk("dltrain", typer.main.get_command(app))


def context(path: str, command):
    """A context to render `command` in, as --help does (named as the user types it)."""
    return command.context_class(command, info_name=path)


def kind(param) -> str:
    """What a parameter takes, as --help shows it without the brackets: val|test, int,
    path, bool, list[str]..."""
    return param.display_type(None).strip("<>")


def choices(param) -> tuple[str, ...] | None:
    """An option's fixed set of values, or None when it takes any value of its type."""
    found = param.type_descriptor.choices
    return None if found is None else tuple(str(choice) for choice in found)


def takes(param) -> type | None:
    """The Python type of one value (int, float, str, bool, Path...), lists unwrapped;
    None for a choice."""
    if choices(param) is not None:
        return None
    annotation = param.type_descriptor.annotation
    inner = getattr(annotation, "__args__", None)
    return inner[0] if inner and getattr(annotation, "__origin__", None) is list else annotation


def usage(path: str, command) -> str:
    """The usage line: `dltrain eval [OPTIONS]`, `dltrain compare [OPTIONS] {CONFIGS}...`."""
    return " ".join([path, *command.collect_usage_pieces(context(path, command))])


def _default(param) -> str:
    if param.required:
        return "required"
    default = param.default
    if default is None or default is False or default == []:
        return ""
    return str(default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _section(path: str, command) -> list[str]:
    lines = [f"### `{path}`", "", command.help or "", "", f"```\n{usage(path, command)}\n```", ""]
    if not command.params:
        return lines
    lines += ["| option | takes | default | description |", "|---|---|---|---|"]
    for param in command.params:
        if param.param_type_name == "argument":
            name = param.metavar or param.name.upper()
        else:
            name = ", ".join(param.opts + param.secondary_opts)
        cells = [f"`{name}`", f"`{kind(param)}`", _default(param), param.help or ""]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return [*lines, ""]


def commands_markdown() -> str:
    """Every command's usage line and options, as Markdown (docs/commands.md holds it)."""
    lines = []
    for path, command in commands():
        lines += _section(path, command)
    return "\n".join(lines)


if __name__ == "__main__":  # python -m dltrain.cli.reference > the block in docs/commands.md
    print(commands_markdown(), end="")
