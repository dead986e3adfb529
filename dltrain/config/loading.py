"""From YAML text to a validated `Config`: safe YAML reading, `--set`/`--param` overrides, and
errors that name the dotted key, the bad value and the closest choice, all at once, one line each.
YAML -> `read_config_file` -> overrides -> `validate`; checkpoints' configs join at `from_dict`."""

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from dltrain.config.data import image_size
from dltrain.config.reading import closest, parse_yaml
from dltrain.config.reference import FIELDS, KEYS
from dltrain.config.schema import Config
from dltrain.config.space import SPACE_FORMS, parse_space
from dltrain.errors import ConfigError, DltrainError
from dltrain.models import facts


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DltrainError(f"config file not found: {path} (give the path of a YAML file)")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError:
        raise ConfigError(["not a text file; expected a YAML config"], str(path)) from None
    if not isinstance(data, dict):
        found = "the file is empty" if data is None else f"top level is a {type(data).__name__}"
        raise ConfigError([f"{found}; expected a mapping of sections"], str(path))
    return data


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
        paths.add(".".join(parts))  # returned only when there are no problems
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


def _space_problem(data: dict, key: str, spec: str) -> str | None:
    """The problem of one search space: an unknown key, a bad range, or ends the key refuses."""
    keys = [k for k in KEYS if not k.startswith("sweep.")]
    if key not in keys:
        if key.startswith("sweep.") or key == "sweep":
            return "the sweep section itself cannot be swept"
        if inside := [k for k in keys if k.startswith(key + ".")]:
            return f"{key} is a section; name a key in it, e.g. {inside[0]}"
        if match := closest(key, keys):
            return f"unknown config key; did you mean {match}?"
        return "unknown config key; see dltrain config reference"
    try:
        space = parse_space(spec)
    except ValueError as err:
        return str(err)
    # Its ends (each choice, or the lowest and highest value) must be values of the key.
    for value in space.choices if space.kind == "choice" else (space.low, space.high):
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


def _path(loc: tuple) -> str:
    """A dotted path; a key that is not plain text is shown quoted (keeps lines single)."""
    return ".".join(str(p) if str(p).isprintable() and " " not in str(p) else repr(p) for p in loc)


def _describe(error: dict) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    path = _path(loc)
    if kind == "extra_forbidden":
        keys = [p[-1] for p in FIELDS if p[:-1] == loc[:-1]]  # those of the section at loc[:-1]
        if match := closest(loc[-1], keys):
            return f"{path}: unknown config key; did you mean {_path((*loc[:-1], match))}?"
        return f"{path}: unknown config key; valid keys here: {', '.join(keys)}"
    if kind == "literal_error":
        choices = _choices(FIELDS[loc].annotation) if loc in FIELDS else []
        hint = f"; did you mean {match}?" if (match := closest(value, choices)) else ""
        return f"{path}: {value!r} is not one of {', '.join(choices)}{hint}"
    if kind == "value_error" and error["msg"].removeprefix("Value error, ").startswith(repr(value)):
        return f"{path}: {error['msg'].removeprefix('Value error, ')}"  # names the value itself
    if kind == "model_type":
        return f"{path}: got {value!r}; expected a section (a mapping of keys)"
    if loc[:2] == ("sweep", "params") and len(loc) == 3:
        dotted = " (keys are dotted: optim.lr)" if isinstance(value, dict) else ""
        return f"{path}: got {value!r}; expected a search space: {SPACE_FORMS}{dotted}"
    expected = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    if kind == "string_pattern_mismatch" and loc == ("device",):
        expected = "auto, cpu, cuda, cuda:N or mps"
    elif kind == "string_pattern_mismatch" and loc == ("name",):
        expected = "a plain folder name: letters, digits, '_', '.' or '-', not starting with '.'"
    elif kind != "finite_number" and _non_finite(value):  # a union's one line would hide it
        expected += ", every number finite"
    return f"{path}: got {value!r}; expected {expected}"


def _non_finite(value: Any) -> bool:
    """Whether inf or nan is in a value, also inside its lists and mappings."""
    if isinstance(value, float):
        return not math.isfinite(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_non_finite(item) for item in items)


def _choices(annotation) -> list[str]:
    """A Literal's values as YAML spells them (true, not True), each once, also inside a union
    (`Literal[...] | None`); `precision` takes both "16" and 16."""
    if get_origin(annotation) is not Literal:
        return list(dict.fromkeys(c for member in get_args(annotation) for c in _choices(member)))
    shown = (str(c).lower() if isinstance(c, bool) else str(c) for c in get_args(annotation))
    return list(dict.fromkeys(shown))


def _cross_problems(cfg: Config | None, data: dict) -> Iterator[str]:
    """Mismatches between sections that are known before any data is read."""
    model, data_section = _section(cfg, data, "model"), _section(cfg, data, "data")
    mixup = data_section.mixup if data_section is not None else None
    if mixup and (mixup.alpha or mixup.cutmix_alpha) and mixup.prob and data_section.batch_size < 2:
        yield (
            "data.mixup: a batch of one image has nothing to mix with; set data.batch_size >= 2, "
            "or data.mixup.alpha and cutmix_alpha to 0"
        )
    if model is None:
        return
    yield from _model_problems(model, data_section)


def _model_problems(model, data) -> Iterator[str]:
    """The model's facts against the config: ImageNet weights, the small-input stem, and the
    image size (known before reading data except for an image folder without data.resize)."""
    if model.pretrained == "imagenet" and (problem := facts.imagenet_problem(model.name)):
        yield f"model.pretrained: {problem}"
    if model.small_input is True and not facts.lookup(model.name).get("stem"):
        yield (
            f"model.small_input: only alexnet and resnet18 have a small-input stem, "
            f"{model.name} has none; leave it at auto"
        )
    size = image_size(data) if data is not None else None
    if data is not None and data.resize is None and model.pretrained == "imagenet":
        size = facts.model_input(model).size or size  # the weights' size
    if size is not None and (
        problem := facts.size_problem(model.name, model.small_input, size, size)
    ):
        yield f"model.name: {problem}"


def _section(cfg: Config | None, data: dict, name: str):
    """Section `name` of `cfg`; of an invalid config, the section if it is valid on its own (so
    checks across sections run despite errors elsewhere), else None."""
    if cfg is not None:
        return getattr(cfg, name)
    try:
        return FIELDS[(name,)].annotation.model_validate(data.get(name) or {})
    except (ValidationError, AttributeError, TypeError):
        return None


def validate(data: dict, source: str = "config", overridden: set[str] = frozenset()) -> Config:
    """A raw config as a Config; ConfigError lists every problem, one line each."""
    cfg, lines = None, []
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        for error in err.errors():
            from_set = " (from --set)" if _path(error["loc"]) in overridden else ""
            lines.append(_describe(error) + from_set)
    lines += _cross_problems(cfg, data)
    sweep = _section(cfg, data, "sweep")
    for key, spec in (sweep.params if sweep is not None else {}).items():
        if problem := _space_problem(data, key, spec):
            where = f"sweep.params.{key}"
            lines.append(f"{where}: {problem}" + (" (from --param)" if where in overridden else ""))
    if lines:
        raise ConfigError(lines, source)
    return cfg


def from_dict(data: dict, source: str, overrides: list[str] = (), params: list[str] = ()) -> Config:
    """Validate a raw config (a file's, or a checkpoint's) after `--set` and `--param` on a copy."""
    data = copy.deepcopy(data)
    overridden = apply_overrides(data, list(overrides), source)
    overridden |= apply_overrides(data, list(params), source, "--param")
    return validate(data, source, overridden)


def load_config(path: str | Path, overrides: list[str] = (), params: list[str] = ()) -> Config:
    """Read a YAML config, apply `--set` overrides and `--param` search spaces, validate."""
    return from_dict(read_config_file(path), str(path), overrides, params)
