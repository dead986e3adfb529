"""From YAML text to a validated `Config`: safe YAML reading, `--set`/`--param` overrides, and
errors that name the dotted key, the bad value and the closest choice, all at once, one line each.
YAML -> `read_config_file` -> overrides -> `validate`; checkpoints' configs join at `from_dict`."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import ValidationError

from dltrain.config.schema import ALEXNET_MIN_SIZE, FIELDS, KEYS, Config, image_size
from dltrain.config.space import SPACE_FORMS, parse_space
from dltrain.errors import ConfigError, DltrainError


# --- YAML --------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) wants a dot in a float; YAML 1.2 and every user expect 1e-3 to be a number.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with the safe loader; problems become a one-line ConfigError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        problem = err.problem or "invalid YAML"
        if "could not determine a constructor" in problem:
            tag = problem.split("tag ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
            problem = f"tag {tag} is not allowed (dltrain reads plain YAML only; remove the tag)"
        raise ConfigError([f"{where}: {problem}"], source) from None
    except yaml.YAMLError as err:  # e.g. a character YAML does not allow
        raise ConfigError([f"invalid YAML: {str(err).splitlines()[0]}"], source) from None


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DltrainError(f"config file not found: {path} (give the path of a YAML file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["not a text file; expected a YAML config"], str(path)) from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        found = "the file is empty" if data is None else f"top level is a {type(data).__name__}"
        raise ConfigError([f"{found}; expected a mapping of sections"], str(path))
    return data


# --- overrides ---------------------------------------------------------------------------
_FORMS = {
    "--set": "KEY=VALUE, e.g. --set optim.lr=0.01",
    "--param": "KEY=SPEC, e.g. --param 'optim.lr=loguniform(1e-4, 1e-1)'",
}


def apply_overrides(data: dict, items: list[str], source: str, flag: str = "--set") -> set[str]:
    """Apply `--set KEY=VALUE` (the value read as YAML) or `--param KEY=SPEC` (a search space, set
    as `sweep.params[KEY]`) to a raw config dict in place; returns the dotted paths they set."""
    problems, paths = [], set()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or "" in key.split(".") or not (raw.strip() or flag == "--set"):
            problems.append(f"{flag} {item!r}: expected {_FORMS[flag]}")
            continue
        if flag == "--param":
            parts, value = ["sweep", "params", key], raw.strip()
        else:
            parts, value = key.split("."), parse_yaml(raw, f"--set {key}") if raw.strip() else None
        if blocked := set_key(data, parts, value):
            problems.append(f"{flag} {key}: {blocked} is a value, not a section")
        else:
            paths.add(".".join(parts))
    if problems:
        raise ConfigError(problems, source)
    return paths


def set_key(data: dict, parts: list[str], value: Any) -> str | None:
    """Set `data[parts[0]][parts[1]]... = value`, making missing (or empty) sections on the way;
    returns the dotted path of a value that stands where a section should, else None."""
    for depth, part in enumerate(parts[:-1]):
        if data.get(part) is None:
            data[part] = {}
        data = data[part]
        if not isinstance(data, dict):
            return ".".join(parts[: depth + 1])
    data[parts[-1]] = value
    return None


# --- sweep search spaces -----------------------------------------------------------------
def _sweep_problems(cfg: Config | None, data: dict, overridden: set[str]) -> list[str]:
    """One line per search space with an unknown key, a bad range, or ends the key refuses."""
    sweep = _section(cfg, data, "sweep")
    keys = [key for key in KEYS if not key.startswith("sweep.")]
    lines = []
    for key, spec in (sweep.params if sweep is not None else {}).items():
        if problem := _space_problem(data, key, spec, keys):
            where = f"sweep.params.{key}"
            lines.append(f"{where}: {problem}" + (" (from --param)" if where in overridden else ""))
    return lines


def _space_problem(data: dict, key: str, spec: str, keys: list[str]) -> str | None:
    if key not in keys:
        if key.startswith("sweep.") or key == "sweep":
            return "the sweep section itself cannot be swept"
        if inside := [k for k in keys if k.startswith(key + ".")]:
            return f"{key} is a section; name a key in it, e.g. {inside[0]}"
        match = _closest(key, keys)
        hint = f"did you mean {match}?" if match else "see dltrain config reference"
        return f"unknown config key; {hint}"
    try:
        space = parse_space(spec)
    except ValueError as err:
        return str(err)
    for value in space.ends():
        trial = copy.deepcopy(data)
        if set_key(trial, key.split("."), value):
            return None  # the section itself is wrong: reported on its own
        try:
            Config.model_validate(trial)
        except ValidationError as err:
            for error in err.errors():
                if f"{_path(error['loc'])}.".startswith(f"{key}."):
                    return f"{spec}: {_describe(error).removeprefix(key + ': ')}"
    return None


# --- validation --------------------------------------------------------------------------
def _closest(word, options) -> str | None:
    return next(iter(difflib.get_close_matches(str(word), [str(o) for o in options], n=1)), None)


def _path(loc: tuple) -> str:
    """A dotted path; a key that is not plain text is shown quoted (keeps lines single)."""
    return ".".join(str(p) if str(p).isprintable() and " " not in str(p) else repr(p) for p in loc)


def _describe(error: dict) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    path = _path(loc)
    if kind == "extra_forbidden":
        keys = [p[-1] for p in FIELDS if p[:-1] == loc[:-1]]  # those of the section at loc[:-1]
        if match := _closest(loc[-1], keys):
            return f"{path}: unknown key; did you mean {_path((*loc[:-1], match))}?"
        return f"{path}: unknown key; valid keys here: {', '.join(keys)}"
    if kind == "literal_error":
        annotation = FIELDS[loc].annotation if loc in FIELDS else None
        choices = get_args(annotation) if get_origin(annotation) is Literal else ()
        match = _closest(value, choices)
        hint = f"; did you mean {match}?" if match else ""
        return f"{path}: {value!r} is not one of {', '.join(map(str, choices))}{hint}"
    if kind == "model_type":
        return f"{path}: got {value!r}; expected a section (a mapping of keys)"
    if loc[:2] == ("sweep", "params") and len(loc) == 3:
        dotted = " (keys are dotted: optim.lr)" if isinstance(value, dict) else ""
        return f"{path}: got {value!r}; expected a search space: {SPACE_FORMS}{dotted}"
    expected = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    if kind == "string_pattern_mismatch" and loc == ("device",):
        expected = "auto, cpu, cuda, cuda:N or mps"
    elif kind == "string_pattern_mismatch" and loc == ("name",):
        expected = "letters, digits, '_', '.' or '-' only"
    return f"{path}: got {value!r}; expected {expected}"


def _cross_problems(cfg: Config | None, data: dict) -> list[str]:
    """Mismatches between the model and data sections that are known before any data is read."""
    model, data_section = _section(cfg, data, "model"), _section(cfg, data, "data")
    if model is None:
        return []
    problems = []
    if model.pretrained == "imagenet" and model.name not in ("alexnet", "resnet18"):
        problems.append(
            f"model.pretrained: imagenet weights exist for alexnet and resnet18, not "
            f"{model.name}; use none or the path of a state-dict file"
        )
    size = image_size(data_section) if data_section is not None else None
    if model.name == "alexnet" and size is not None:
        small = size < 64 if model.small_input == "auto" else model.small_input
        smallest = ALEXNET_MIN_SIZE[bool(small)]
        if size < smallest:
            problems.append(
                f"model.name: alexnet (small_input {str(small).lower()}) needs images of at least "
                f"{smallest} px; {data_section.dataset} gives {size} px: set data.resize, or use "
                "cnn or resnet18"
            )
    return problems


def _section(cfg: Config | None, data: dict, name: str):
    """Section `name` of `cfg`; of an invalid config, the section if it is valid on its own (to
    check across sections despite errors), else None."""
    if cfg is not None:
        return getattr(cfg, name)
    try:
        return FIELDS[(name,)].annotation.model_validate(data.get(name) or {})
    except (ValidationError, AttributeError, TypeError):
        return None


def validate(data: dict, source: str = "config", overridden: set[str] = frozenset()) -> Config:
    cfg, lines = None, []
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        for error in err.errors():
            from_set = " (from --set)" if _path(error["loc"]) in overridden else ""
            lines.append(_describe(error) + from_set)
    lines += _cross_problems(cfg, data) + _sweep_problems(cfg, data, overridden)
    if lines:
        raise ConfigError(lines, source)
    return cfg


def from_dict(data: dict, source: str, overrides: list[str] = (), params: list[str] = ()) -> Config:
    """Validate a raw config (a file's, or the one a checkpoint saved) after applying `--set`
    overrides and `--param` search spaces to a copy; ConfigError lists every problem."""
    data = copy.deepcopy(data)
    overridden = apply_overrides(data, list(overrides), source)
    overridden |= apply_overrides(data, list(params), source, "--param")
    return validate(data, source, overridden)


def load_config(path: str | Path, overrides: list[str] = (), params: list[str] = ()) -> Config:
    """Read a YAML config, apply `--set` overrides and `--param` search spaces, validate."""
    return from_dict(read_config_file(path), str(path), overrides, params)
