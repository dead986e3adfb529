"""Config fuzzing: whatever comes in, the outcome is a valid Config or our ConfigError."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dltrain.config import Config, apply_overrides, parse_yaml, validate
from dltrain.errors import ConfigError, DltrainError
from dltrain.training import checkpoint


def _keys(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    """Every section path and its keys, from the schema itself."""
    found = {prefix: list(model.model_fields)}
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found.update(_keys(sub, f"{prefix}{name}."))
    return found


SECTIONS = _keys(Config)
ALL_KEYS = sorted({key for keys in SECTIONS.values() for key in keys})
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["1e-3", "auto", "none", "digits", "mlp", "sgd"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(ALL_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
config_dicts = st.dictionaries(
    st.sampled_from(ALL_KEYS) | st.text(max_size=8) | st.integers(), values, max_size=8
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_our_error(call) -> None:
    try:
        result = call()
    except ConfigError as err:
        assert err.lines and all(line and "\n" not in line for line in err.lines)
        assert len(str(err).splitlines()) == len(err.lines)
        return
    assert isinstance(result, Config)


@FUZZ
@given(config_dicts)
def test_random_nested_dicts(data):
    _only_our_error(lambda: validate(data))


@FUZZ
@given(st.sampled_from(sorted(SECTIONS)), st.data())
def test_random_values_in_real_sections(section, draw):
    keys = SECTIONS[section]
    body = draw.draw(st.dictionaries(st.sampled_from(keys), values, max_size=len(keys)))
    data: dict = {}
    node = data
    for part in [p for p in section.split(".") if p]:
        node = node.setdefault(part, {})
    node.update(body)
    _only_our_error(lambda: validate(data))


@FUZZ
@given(
    st.lists(
        st.text(max_size=30)
        | st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(ALL_KEYS) | st.text(max_size=6),
            st.text(max_size=10),
        ),
        max_size=5,
    )
)
def test_random_overrides(overrides):
    def load():
        data = {"optim": {"lr": 0.1}}
        return validate(data, "fuzz", apply_overrides(data, overrides, "fuzz"))

    _only_our_error(load)


@FUZZ
@given(st.text(max_size=200))
def test_random_yaml_text(text):
    def load():
        data = parse_yaml(text, "fuzz")
        if not isinstance(data, dict):
            raise ConfigError(["not a mapping"], "fuzz")
        return validate(data)

    _only_our_error(load)


def test_random_bytes_as_checkpoints(tmp_path):
    path = tmp_path / "random.pt"
    rng = random.Random(0)
    for _ in range(200):
        path.write_bytes(rng.randbytes(rng.randint(0, 4096)))
        try:
            checkpoint.load(path)
        except DltrainError as err:
            assert str(path) in str(err) and "\n" not in str(err)
