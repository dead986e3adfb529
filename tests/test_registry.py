import pytest

from dltrain import config
from dltrain.data import DATASETS
from dltrain.errors import DltrainError
from dltrain.models import MODELS
from dltrain.optim import OPTIMIZERS
from dltrain.registry import Registry


def test_register_refuses_duplicates():
    registry = Registry("thing")
    registry.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        registry.register("a")(lambda: 2)


def test_unknown_name_lists_choices_and_suggests():
    registry = Registry("model")
    for name in ("mlp", "cnn"):
        registry.register(name)(lambda: None)
    with pytest.raises(
        DltrainError, match=r"unknown model 'cnnn'; available: cnn, mlp; did you mean cnn\?"
    ):
        registry.get("cnnn")


@pytest.mark.parametrize(
    "registry, names",
    [(DATASETS, config.DATASETS), (MODELS, config.MODELS), (OPTIMIZERS, config.OPTIMIZERS)],
)
def test_schema_choices_match_registries(registry, names):
    # The schema lists choices without importing torch; it must never drift from the registries.
    assert registry.names() == sorted(names)
