"""The sweep search-space grammar: `loguniform(1e-4, 1e-1)`, `int(16, 256, log)`, `choice([...])`.
Torch-free and Optuna-free: a config's search spaces are checked before anything runs."""

import math
import re
import sys
from dataclasses import dataclass

from dltrain.config.reading import closest, parse_yaml
from dltrain.errors import DltrainError

SPACE_KINDS = ("loguniform", "uniform", "int", "choice")
SPACE_FORMS = "loguniform(lo, hi), uniform(lo, hi), int(lo, hi[, log]) or choice([a, b, ...])"


@dataclass(frozen=True)
class Space:
    """One parameter's search space, parsed from e.g. `loguniform(1e-4, 1e-1)`."""

    kind: str  # one of SPACE_KINDS
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()


def parse_space(spec: str) -> Space:
    """`kind(arguments)`, the arguments read as YAML; ValueError says what is wrong."""
    match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", spec, flags=re.DOTALL)
    if not match:
        raise ValueError(f"{spec!r} is not a search space; expected {SPACE_FORMS}")
    kind, text = match.groups()
    if kind not in SPACE_KINDS:
        hint = f"; did you mean {close}?" if (close := closest(kind, SPACE_KINDS)) else ""
        raise ValueError(f"{kind!r} is not one of {', '.join(SPACE_KINDS)}{hint}")
    try:
        args = parse_yaml(f"[{text}]", spec)
    except DltrainError:
        raise ValueError(f"{spec}: cannot read the arguments; expected {SPACE_FORMS}") from None
    if kind == "choice":
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise ValueError(f"{spec}: expected a non-empty list, e.g. choice([sgd, adam])")
        if len({repr(value) for value in args[0]}) < len(args[0]):
            raise ValueError(f"{spec}: a value is listed twice")
        return Space("choice", choices=tuple(args[0]))
    log = kind == "loguniform"
    if kind == "int" and len(args) == 3 and args[2] == "log":
        args, log = args[:2], True
    int_form = "int(lo, hi) or int(lo, hi, log) with whole numbers"
    number, form = (int, int_form) if kind == "int" else (int | float, f"{kind}(lo, hi)")
    # Bounds beyond a float's range (1e309, 10**400) are not finite either.
    if len(args) != 2 or not all(
        isinstance(a, number)
        and not isinstance(a, bool)
        and abs(a) <= sys.float_info.max
        and math.isfinite(a)
        for a in args
    ):
        raise ValueError(f"{spec}: expected {form}")
    low, high = args
    if low >= high:
        raise ValueError(f"{spec}: lo must be below hi")
    if log and low <= 0:
        raise ValueError(f"{spec}: a log scale needs lo > 0")
    return Space(kind, low, high, log)
