"""A tiny name -> builder registry, and dltrain's three: datasets, models, optimizers. Each is
declared here with the names it holds, so the config schema offers them as choices without
importing torch; data, models and optim register a builder per name (a test checks each has one).
A dataset's builder is a `DataSource`: how to load it, and what it holds without loading it.
"""

import difflib
from collections.abc import Callable

from dltrain.errors import DltrainError


class Registry:
    def __init__(self, kind: str, choices: tuple[str, ...] = ()):
        self.kind = kind
        self.choices = choices  # the names it may hold; empty: any name
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator: register a builder under `name`; a second builder of that name is refused."""

        def add(builder: Callable) -> Callable:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if self.choices and name not in self.choices:
                raise ValueError(f"{self.kind} {name!r}: declare it in dltrain/registry.py first")
            self._items[name] = builder
            return builder

        return add

    def get(self, name: str) -> Callable:
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, self._items, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        known = ", ".join(self.names())
        raise DltrainError(f"unknown {self.kind} {name!r}; available: {known}{hint}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


DATASETS = Registry(
    "dataset", ("digits", "fake", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder")
)
MODELS = Registry("model", ("mlp", "cnn", "alexnet", "resnet18"))
OPTIMIZERS = Registry("optimizer", ("sgd", "adam", "adamw", "rmsprop"))
