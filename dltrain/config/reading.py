"""Plain YAML, read safely: the loader every config, override and search space goes through,
and the did-you-mean every error about a name offers."""

import difflib
import re
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from dltrain.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # a list or mapping: SafeLoader's own error says so
                continue
            if key in seen:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
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


def closest(word, options) -> str | None:
    """The option nearest to a misspelt word, if one is near enough."""
    return next(iter(difflib.get_close_matches(str(word), [str(o) for o in options], n=1)), None)
