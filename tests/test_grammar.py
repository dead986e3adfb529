"""One grammar on the whole command line, checked through Typer's own introspection: the same
idea has the same option on every command that has it, a fixed set of values is a choice, a
number is a number, and docs/commands.md is what --help says. A new command or option that
drifts fails here, naming the rule."""

import json
import typing
from pathlib import Path

import pytest

from dltrain.cli.reference import choices, commands, commands_markdown, takes

COMMANDS = dict(commands())
READS = ("config", "configs", "ckpt")  # parameters that read a config or a checkpoint
DOCUMENTS = ("dltrain config show", "dltrain config reference", "dltrain config schema")
INPUTS = ("--ckpt", "--resume")  # the Path options that are read, not written
SHARED = ("--set", "--device", "--json", "--quiet")  # one definition each, in cli/app.py

# Where a command departs from a rule, and why. Keep this short.
EXCEPTIONS = {
    ("dltrain export", "--device"): "export runs on the CPU always (see export_checkpoint)",
}
# Options that take any text, and why it cannot be a choice.
FREE_TEXT = {
    "--set": "KEY=VALUE",
    "--param": "KEY=SPEC",
    "--device": "cuda:N takes any N",
    "--from": "a checkpoint's path, or imagenet",
    "--storage": "a database URL",
}


def options(command) -> dict:
    return {name: p for p in command.params for name in p.opts if p.param_type_name == "option"}


def reads(command) -> bool:
    return any(param.name in READS for param in command.params)


def rows(rule: str) -> list:
    """(command, option) pairs a rule applies to, less the listed exceptions."""
    found = []
    for path, command in COMMANDS.items():
        wanted = {
            "reads": ("--set", "--device") if reads(command) else (),
            "prints": ("--json", "--quiet") if path not in DOCUMENTS else (),
        }[rule]
        for option in wanted:
            if (path, option) not in EXCEPTIONS:
                found.append(pytest.param(path, option, id=f"{path[8:]} {option}"))
    return found


def test_there_are_commands_to_check():
    assert {"dltrain train", "dltrain eval", "dltrain config show"} <= COMMANDS.keys()
    assert len(rows("reads")) >= 20 and len(rows("prints")) >= 20


@pytest.mark.parametrize("path, option", rows("reads"))
def test_a_command_that_reads_a_config_or_checkpoint_has_set_and_device(path, option):
    assert option in options(COMMANDS[path]), f"{path}: add {option} (cli/app.py has it)"


@pytest.mark.parametrize("path, option", rows("prints"))
def test_a_command_that_prints_a_result_has_json_and_quiet(path, option):
    assert option in options(COMMANDS[path]), f"{path}: add {option} (cli/app.py has it)"


@pytest.mark.parametrize("option", SHARED)
def test_a_shared_option_is_one_definition(option):
    found = {
        path: (tuple(param.opts), param.help)
        for path, command in COMMANDS.items()
        if (param := options(command).get(option)) is not None and (path, option) not in EXCEPTIONS
    }
    assert len(set(found.values())) == 1, f"{option} differs: {found}"


@pytest.mark.parametrize("path", COMMANDS)
def test_every_output_location_is_out(path):
    for param in COMMANDS[path].params:
        if param.param_type_name != "option" or takes(param) is not Path:
            continue
        if param.opts[0] not in INPUTS:
            assert param.opts[0] == "--out", f"{path} {param.opts}: call where it writes --out"
        if "--run-dir" in param.opts:
            assert param.opts == ["--out", "--run-dir"], f"{path}: --run-dir is --out's alias"


@pytest.mark.parametrize("path", COMMANDS)
def test_text_options_are_choices_unless_free(path):
    for param in COMMANDS[path].params:
        if param.param_type_name == "option" and takes(param) is str:
            assert param.opts[0] in FREE_TEXT, (
                f"{path} {param.opts[0]} takes any text: make it a choice (Literal or Enum), a "
                "number, a path, or say in FREE_TEXT why it is free"
            )


@pytest.mark.parametrize("path", COMMANDS)
def test_numbers_are_numbers(path):
    for param in COMMANDS[path].params:
        default = param.default
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert takes(param) in (int, float), f"{path} {param.name}: a number, typed {takes}"
    if path == "dltrain export":
        assert takes(options(COMMANDS[path])["--opset"]) is int


@pytest.mark.parametrize("path", COMMANDS)
def test_help_has_no_line_break_inside_a_paragraph(path):
    command = COMMANDS[path]
    for paragraph in (command.help or "").split("\n\n"):
        assert "\n" not in paragraph, f"{path}: {paragraph!r}"
    for param in command.params:
        assert "\n" not in (param.help or ""), f"{path} {param.name}: {param.help!r}"
        assert param.help, f"{path} {param.name}: no help"


@pytest.mark.parametrize("path", COMMANDS)
def test_arguments_are_named_in_upper_case(path):
    for param in COMMANDS[path].params:
        if param.param_type_name == "argument":
            assert param.metavar == param.name.upper(), f"{path}: {param.metavar}"


def test_choices_are_the_ones_the_rest_of_dltrain_takes():
    from dltrain.config.schema import EvalConfig, SweepConfig
    from dltrain.tools.export import FORMATS
    from dltrain.tools.show import SPLITS

    def schema(section, key) -> tuple:
        return typing.get_args(section.model_fields[key].annotation)

    chosen = {
        ("dltrain eval", "--tta"): schema(EvalConfig, "tta"),
        ("dltrain sweep", "--sampler"): schema(SweepConfig, "sampler"),
        ("dltrain export", "--format"): tuple(FORMATS),
        ("dltrain show", "--split"): SPLITS,
        ("dltrain eval", "--split"): ("val", "test"),
    }
    for (path, option), expected in chosen.items():
        assert choices(options(COMMANDS[path])[option]) == expected, (path, option)


def test_the_command_reference_is_current():
    page = (Path(__file__).resolve().parents[1] / "docs" / "commands.md").read_text()
    start, end = "<!-- commands:start -->\n", "<!-- commands:end -->"
    current = page[page.index(start) + len(start) : page.index(end)]
    assert current == commands_markdown(), (
        "docs/commands.md is stale: replace the block between the markers with the output of "
        "`python -m dltrain.cli.reference`"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["summary", "configs/digits_mlp.yaml"],
        ["show", "{config}", "--n", "4", "--out", "{tmp}"],
        ["models", "mlp"],
    ],
    ids=lambda args: args[0],
)
def test_json_is_one_object_and_quiet_is_shorter(cli, digits_config, tmp_path, args):
    args = [arg.format(config=digits_config, tmp=tmp_path) for arg in args]
    plain, quiet, as_json = cli(*args), cli(*args, "--quiet"), cli(*args, "--json")
    for result in (plain, quiet, as_json):
        assert result.exit_code == 0, result.output
    assert len(quiet.stdout.splitlines()) <= len(plain.stdout.splitlines())
    assert len(as_json.stdout.strip().splitlines()) == 1
    json.loads(as_json.stdout)
