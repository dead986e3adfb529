"""A tiny name -> builder registry, and the three that dltrain has: datasets, models, optimizers.

Each registry is declared here with the names it holds, so the config schema offers them as
choices without importing torch; the modules that build them (data, models, optim) register a
builder under each name, and a test checks that every declared name has one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from dltrain.errors import DltrainError

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    def __init__(self, kind: str, choices: tuple[str, ...] = ()):
        self.kind = kind
        self.choices = choices  # the names it may hold; empty: any name
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register a builder under `name`; a second builder of that name is refused."""

        def add(builder: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if self.choices and name not in self.choices:
                raise ValueError(f"{self.kind} {name!r}: declare it in dltrain/registry.py first")
            self._items[name] = builder
            return builder

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            known = ", ".join(sorted(self._items))
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise DltrainError(f"unknown {self.kind} {name!r}; available: {known}{hint}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


DATASETS: Registry = Registry(
    "dataset", ("digits", "fake", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder")
)
MODELS: Registry = Registry("model", ("mlp", "cnn", "alexnet", "resnet18"))
OPTIMIZERS: Registry = Registry("optimizer", ("sgd", "adam", "adamw", "rmsprop"))
