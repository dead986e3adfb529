"""The package's shape, as shared/STYLE.md draws it: layers in folders whose imports point down
only, no import cycles (imports inside functions and under TYPE_CHECKING count too), and
modules and functions a reader takes in at once."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dltrain"
# Top to bottom; a module may import its own layer and the layers below it.
LAYERS = [
    ("cli", "__main__"),
    ("tools",),
    ("training",),
    ("reporting",),
    ("data", "models", "optim"),
    ("config", "files", "registry", "errors", "__init__"),
]
# The one way up, on purpose: config checks read the model-facts table (which names exist, their
# input sizes), which lives with the models it describes and imports no torch.
READS_UP = {("dltrain.config", "dltrain.models"), ("dltrain.config", "dltrain.models.facts")}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The dltrain modules `name` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate not in MODULES and "." in candidate:
                candidate = candidate.rsplit(".", 1)[0]
            # A module's own packages run first whatever it imports: not an edge of its own.
            if candidate in MODULES and not name.startswith(candidate):
                found.add(candidate)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def _package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)  # StopIteration: a new top-level module or folder needs its place


def test_imports_point_down_only():
    upward = [
        f"{name} imports {other}"
        for name, imports in GRAPH.items()
        for other in imports
        if _layer(other) < _layer(name) and (_package(name), other) not in READS_UP
    ]
    assert not upward


def test_no_import_cycles():
    seen, on_path, cycles = set(), [], []

    def visit(name: str) -> None:
        if name in on_path:
            cycles.append(" -> ".join(on_path[on_path.index(name) :] + [name]))
            return
        if name in seen:
            return
        seen.add(name)
        on_path.append(name)
        for other in sorted(GRAPH[name]):
            visit(other)
        on_path.pop()

    for name in sorted(GRAPH):
        visit(name)
    assert not cycles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_short(name):
    source = MODULES[name].read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines: split it by what its parts do"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long
