"""Config errors are reported all at once, one line each, with exit code 2 and no traceback."""

import json

import pytest
import yaml

from dltrain.config import Config, load_config
from dltrain.config.loading import from_dict
from dltrain.config.reference import KEYS
from dltrain.errors import ConfigError

# (YAML text, --set overrides, lines the error output must contain)
BAD_CONFIGS = [
    ("optim:\n  lrr: 0.1\n", [], ["optim.lrr: unknown config key; did you mean optim.lr?"]),
    ("train:\n  epocs: 3\n", [], ["train.epocs: unknown config key; did you mean train.epochs?"]),
    ("colour: red\n", [], ["colour: unknown config key"]),
    ("train:\n  epochs: ten\n", [], ["train.epochs: got 'ten'; expected a valid integer"]),
    ("optim:\n  lr: -1\n", [], ["optim.lr: got -1; expected greater than 0"]),
    (
        "optim:\n  name: adamm\n",
        [],
        ["optim.name: 'adamm' is not one of sgd, adam, adamw, rmsprop; did you mean adam?"],
    ),
    ("model:\n  name: cnnn\n", [], ["model.name: 'cnnn' is not one of"]),
    ("data:\n  dataset: digitz\n", [], ["did you mean digits?"]),
    ("device: gpu\n", [], ["device: got 'gpu'; expected auto, cpu, cuda, cuda:N or mps"]),
    ("data:\n  val_split: 1.5\n", [], ["data.val_split: got 1.5; expected a fraction"]),
    ("optim: 3\n", [], ["optim: got 3; expected a section"]),
    (
        "name: x\n",
        ["optim.lrr=0.1"],
        ["optim.lrr: unknown config key; did you mean optim.lr? (from --set)"],
    ),
    ("name: x\n", ["optim.lr"], ["--set 'optim.lr': expected KEY=VALUE"]),
    (
        "optim:\n  lr: 0.1\n",
        ["optim.lr.x=1"],
        ["--set optim.lr.x: optim.lr is a value, not a section"],
    ),
    (
        "optim:\n  name: sgd\n  momentum: 0\n  nesterov: true\n",
        [],
        ["optim.nesterov: got True; expected false when momentum is 0"],
    ),
    (
        'a: !!python/object/apply:os.system ["echo hacked"]\n',
        [],
        ["line 1, column 4: tag !!python/object/apply:os.system is not allowed"],
    ),
    ("optim:\n  lr: 0.1\n  lr: 0.2\n", [], ["line 3, column 3: duplicate key 'lr'"]),
    ("optim: [1, 2\n", [], ["line 2, column 1"]),
    ("", [], ["the file is empty"]),
    ("train:\n  ema:\n    decay: 1\n", [], ["train.ema.decay: got 1; expected less than 1"]),
    (
        "train:\n  ema:\n    decay: -0.1\n",
        [],
        ["train.ema.decay: got -0.1; expected greater than or equal to 0"],
    ),
    (
        "data:\n  mixup:\n    alpha: -1\n",
        [],
        ["data.mixup.alpha: got -1; expected greater than or equal to 0"],
    ),
    (
        "data:\n  sampler: balancd\n",
        [],
        ["data.sampler: 'balancd' is not one of random, balanced; did you mean balanced?"],
    ),
    (
        "train:\n  class_weights: [1, -1]\n",
        [],
        ["train.class_weights: got [1, -1]; expected weights >= 0, at least one of them > 0"],
    ),
    (
        "train:\n  class_weights: heavy\n",
        [],
        ["train.class_weights: got 'heavy'; expected none, balanced, or a list of weights"],
    ),
    (
        "data:\n  batch_size: 1\n  mixup:\n    alpha: 0.2\n",
        [],
        ["data.mixup: a batch of one image has nothing to mix with"],
    ),
    ("eval:\n  tta: mirror\n", [], ["eval.tta: 'mirror' is not one of none, flip, flip+shift"]),
    ("? [1, 2]\n: x\n", [], ["line 1, column 3: found unhashable key"]),
    (
        "sweep:\n  metric: val_ac\n",
        [],
        ["sweep.metric: 'val_ac' is not one of val_acc, val_loss; did you mean val_acc?"],
    ),
    (
        "train:\n  precision: bf1\n",
        [],
        ["train.precision: 'bf1' is not one of auto, 32, bf16, 16; did you mean bf16?"],
    ),
    ("train:\n  compile: maybe\n", [], ["train.compile: 'maybe' is not one of auto, true, false"]),
    (
        "sweep:\n  params:\n    data.batch_size: int(1, 1" + "0" * 400 + ")\n",
        [],
        ["sweep.params.data.batch_size: int(1, 1000", "expected int(lo, hi) or int(lo, hi, log)"],
    ),
    ("- 1\n- 2\n", [], ["top level is a list; expected a mapping"]),
]


@pytest.mark.parametrize("text, overrides, expected", BAD_CONFIGS)
def test_bad_config_is_one_line_per_problem(cli, write_config, text, overrides, expected):
    path = write_config(text)
    args = ["config", "show", path] + [a for o in overrides for a in ("--set", o)]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for line in expected:
        assert line in result.stderr, result.stderr
    assert all(line.startswith("error: ") for line in result.stderr.splitlines())


def test_all_problems_reported_at_once(cli, write_config):
    path = write_config("optim:\n  lrr: 0.1\n  name: sgdd\ntrain:\n  epochs: 0\n")
    result = cli("train", path, "--set", "data.batch_size=zero")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    assert {line.split(": ")[2] for line in lines} == {
        "optim.lrr",
        "optim.name",
        "train.epochs",
        "data.batch_size",
    }


def test_misspelt_override_on_train_exits_2_before_touching_data(cli, tmp_path):
    result = cli(
        "train", "configs/digits_mlp.yaml", "--set", "optim.lrr=0.1", "--run-dir", tmp_path / "run"
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: configs/digits_mlp.yaml: optim.lrr: unknown config key; did you mean optim.lr? "
        "(from --set)"
    )
    assert not (tmp_path / "run").exists()


def test_scientific_notation_is_a_float_in_file_and_override(write_config):
    cfg = load_config(write_config("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n"))
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 0.0005
    cfg = load_config(write_config("name: x\n"), ["optim.lr=1e-2", "train.epochs=3"])
    assert cfg.optim.lr == 0.01 and cfg.train.epochs == 3


def test_unsafe_tag_never_runs(write_config, tmp_path):
    marker = tmp_path / "marker"
    path = write_config(f'a: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


def test_val_split_takes_fraction_or_count(write_config):
    assert load_config(write_config("data:\n  val_split: 0.25\n")).data.val_split == 0.25
    count = load_config(write_config("data:\n  val_split: 300\n")).data.val_split
    assert count == 300 and isinstance(count, int)


def test_config_show_round_trips(cli):
    result = cli("config", "show", "configs/digits_mlp.yaml", "--set", "optim.lr=1e-2")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["optim"]["lr"] == 0.01
    assert Config.model_validate(shown) == load_config("configs/digits_mlp.yaml", ["optim.lr=0.01"])


def test_config_schema_is_json_with_descriptions(cli):
    result = cli("config", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False
    optim = schema["$defs"]["OptimConfig"]["properties"]
    assert optim["name"]["enum"] == ["sgd", "adam", "adamw", "rmsprop"]


def test_every_field_has_default_and_description():
    def walk(model, prefix):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            assert not field.is_required(), f"{prefix}{name} has no default"
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, Config.__mro__[1]):
                walk(sub, f"{prefix}{name}.")

    walk(Config, "")


# Every float of the schema, found from its annotations, and the lists of floats inside unions
# (data.normalize's mean and std, train.class_weights): none may be inf or nan.
FLOAT_KEYS = [key for key, field in KEYS.items() if "float" in str(field.annotation)]
LISTED = {
    "train.class_weights": ("train.class_weights", "[1, {}]"),
    "data.normalize.mean": ("data.normalize", "{{mean: [{}], std: [1]}}"),
    "data.normalize.std": ("data.normalize", "{{mean: [0.5], std: [{}]}}"),
}


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999", "-1e999"])
@pytest.mark.parametrize("key", sorted({*FLOAT_KEYS, *LISTED}))
def test_every_float_must_be_finite(key, value):
    shown, form = LISTED.get(key, (key, "{}"))
    with pytest.raises(ConfigError) as caught:
        from_dict({}, "config", [f"{shown}={form.format(value)}"])
    assert len(caught.value.lines) == 1, caught.value.lines
    line = caught.value.lines[0]
    assert line.startswith(f"{shown}: got ") and line.endswith(" (from --set)"), line
    assert "expected a finite number" in line or "every number finite" in line, line


def test_an_infinite_learning_rate_is_one_line_before_anything_runs(cli, tmp_path):
    result = cli(
        "train", "configs/digits_mlp.yaml", "--set", "optim.lr=.inf", "--run-dir", tmp_path / "run"
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: configs/digits_mlp.yaml: optim.lr: got inf; expected a finite number (from --set)"
    )
    assert not (tmp_path / "run").exists()


def test_non_finite_numbers_in_a_file_are_refused(cli, write_config):
    path = write_config("optim: {lr: .nan}\ndata: {val_split: .inf}\ntrain: {grad_clip: 1e999}\n")
    result = cli("config", "show", path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: {key}: got {value}; expected a finite number"
        for key, value in (
            ("data.val_split", "inf"),
            ("optim.lr", "nan"),
            ("train.grad_clip", "inf"),
        )
    ]
