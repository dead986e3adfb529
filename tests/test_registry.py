import pytest

from dltrain import registry
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


def test_register_refuses_undeclared_names():
    declared = Registry("model", ("mlp",))
    with pytest.raises(ValueError, match="declare it in dltrain/registry.py"):
        declared.register("cnn")(lambda: None)


@pytest.mark.parametrize(
    "built, declared",
    [
        (DATASETS, registry.DATASETS),
        (MODELS, registry.MODELS),
        (OPTIMIZERS, registry.OPTIMIZERS),
    ],
)
def test_schema_choices_match_registries(built, declared):
    # The schema lists the declared names without importing torch; each has a builder.
    assert built is declared
    assert built.names() == sorted(declared.choices)
