"""Issue 22, item 7: one line instead of a traceback. `--set` changes a checkpoint cannot take
are refused before anything is built or written (config.changes, through open_saved); a
weights mismatch anywhere is one line; absurd sizes in `summary` are one line; Ctrl-C while
dltrain or torch imports is one line and exit 130."""

import shutil

import pytest
import torch

from dltrain.errors import DltrainError
from dltrain.training import checkpoint
from tests.test_faults import run

CONFIG = """\
name: overrides
device: cpu
data: {dataset: digits, val_split: 0.2, batch_size: 32}
model: {name: mlp, hidden: [16]}
optim: {name: adam, lr: 3e-3}
train: {epochs: 1}
checkpoint: {interval: 0}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained for one epoch, shared: the tests that refuse must leave it unchanged."""
    from typer.testing import CliRunner

    from dltrain.cli import app

    root = tmp_path_factory.mktemp("overrides")
    (root / "config.yaml").write_text(CONFIG)
    result = CliRunner().invoke(app, ["train", str(root / "config.yaml"), "--out", str(root / "r")])
    assert result.exit_code == 0, result.output
    return root / "r"


def files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def one_line(result, code=1):
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# command, --set changes, what the one line says (after "<checkpoint>: ")
REFUSED = [
    ("eval", ["model.hidden=[64]"], "eval cannot take --set model.hidden=[64] (the checkpoint has [16]): the weights fit only the architecture"),  # noqa: E501
    ("eval", ["data.dataset=fake"], "eval cannot take --set data.dataset=fake (the checkpoint has digits): the weights fit only the images and classes"),  # noqa: E501
    ("eval", ["data.resize=16"], "--set data.resize=16 (the checkpoint has null)"),
    ("eval", ["data.val_split=0.5"], "it moves the validation/test split"),
    ("eval", ["seed=3"], "--set seed=3 (the checkpoint has 0): it moves the validation/test split"),  # noqa: E501
    ("export", ["model.batch_norm=true"], "export cannot take --set model.batch_norm=true"),
    ("resume", ["optim.name=sgd"], "resume cannot take --set optim.name=sgd (the checkpoint has adam): on resume the optimizer"),  # noqa: E501
    ("resume", ["optim.lr=0.1"], "resume cannot take --set optim.lr=0.1"),
    ("resume", ["model.hidden=[64]"], "resume cannot take --set model.hidden=[64]"),
    ("resume", ["schedule.name=step"], "the schedule goes on from the checkpoint's state"),
    ("resume", ["train.early_stopping.monitor=val_loss"], "measured by the monitor it had"),
]  # fmt: skip


@pytest.mark.parametrize(
    "command, changes, says", REFUSED, ids=[f"{case[0]}-{case[1][0]}" for case in REFUSED]
)
def test_changes_a_checkpoint_cannot_take_are_one_line_and_write_nothing(
    cli, trained, tmp_path, command, changes, says
):
    before = files(trained)
    sets = [arg for change in changes for arg in ("--set", change)]
    if command == "resume":
        ckpt = trained / "last.pt"
        result = cli("train", "--resume", trained, "--set", "train.epochs=2", *sets)
    elif command == "export":
        ckpt = trained / "best.pt"
        out = tmp_path / "model.ts"
        result = cli("export", "--ckpt", ckpt, "--format", "torchscript", "--out", out, *sets)
        assert not out.exists()
    else:
        ckpt = trained / "best.pt"
        result = cli("eval", "--ckpt", ckpt, *sets)
    line = one_line(result)
    assert line.startswith(f"error: {ckpt}: ") and says in line
    if "finetune" in line:  # the way out names this checkpoint
        assert line.endswith(
            f"a new run from these weights can change it: dltrain finetune CONFIG --from {ckpt}"
        )
    assert files(trained) == before  # config.yaml not rewritten, no eval-val.json, no last.pt


def test_changes_a_checkpoint_can_take_are_taken(cli, trained, tmp_path):
    allowed = ["--set", "data.batch_size=7", "--set", "eval.tta=flip", "--set", "optim.name=sgd"]
    result = cli("eval", "--ckpt", trained / "best.pt", "--device", "cpu", *allowed, "--json")
    assert result.exit_code == 0, result.output
    copy = shutil.copytree(trained, tmp_path / "r")
    more = [
        "--set",
        "train.epochs=2",
        "--set",
        "data.batch_size=16",
        "--set",
        "train.ema.decay=0.9",
    ]
    result = cli("train", "--resume", copy, *more)
    assert result.exit_code == 0, result.output
    assert checkpoint.load(copy / "last.pt")["epoch"] == 2


def test_a_one_cycle_run_cannot_stretch_on_resume(cli, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG + "schedule: {name: onecycle}\n")
    assert cli("train", config, "--out", tmp_path / "r").exit_code == 0
    before = files(tmp_path / "r")
    for change in ("train.epochs=2", "data.batch_size=16", "train.accumulate=2"):
        line = one_line(cli("train", "--resume", tmp_path / "r", "--set", change))
        assert f"resume cannot take --set {change} (the checkpoint has " in line
        assert "a one-cycle schedule's state counts the optimizer steps" in line
    assert files(tmp_path / "r") == before


def test_resume_in_fp16_of_a_run_without_it_starts_a_gradient_scaler(cli, trained, tmp_path):
    copy = shutil.copytree(trained, tmp_path / "r")  # its checkpoint's scaler state is empty
    result = cli(
        "train", "--resume", copy, "--set", "train.epochs=2", "--set", "train.precision=16"
    )
    assert result.exit_code == 0, result.output
    assert checkpoint.load(copy / "last.pt")["scaler"]  # fp16: the scaler has a state now


def _image_folder(root, classes: str, size: int = 8):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "classes, size, says",
    [("abc", 8, "holds classes [a, b, c]"), ("ab", 6, "holds image size 6x6")],
    ids=["classes", "size"],
)
def test_data_root_with_other_data_is_one_line(cli, tmp_path, classes, size, says):
    trained_on, other = _image_folder(tmp_path / "ab", "ab"), tmp_path / "other"
    _image_folder(other, classes, size)
    config = tmp_path / "config.yaml"
    data = f"data: {{dataset: imagefolder, root: {trained_on}, val_split: 0.25, num_workers: 0}}"
    config.write_text(CONFIG.replace(CONFIG.splitlines()[2], data))
    assert cli("train", config, "--out", tmp_path / "r").exit_code == 0
    before, ckpt = files(tmp_path / "r"), tmp_path / "r" / "best.pt"
    out = tmp_path / "model.ts"
    for args in (["eval"], ["export", "--format", "torchscript", "--out", out]):
        line = one_line(cli(*args, "--ckpt", ckpt, "--set", f"data.root={other}"))
        assert line == (
            f"error: data.root {other} {says}, {ckpt} was trained on "
            f"{'[a, b]' if 'classes' in says else '8x8'}: point data.root at the data it was "
            "trained on"
        )
    assert files(tmp_path / "r") == before and not out.exists()


def test_a_weights_mismatch_is_one_line_wherever_weights_are_loaded():
    model, other = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)
    with pytest.raises(DltrainError) as caught:
        checkpoint.load_weights(model, other.state_dict(), "runs/x/best.pt")
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("runs/x/best.pt: its weights do not fit the model its config builds")
    assert "size mismatch for weight" in message


@pytest.mark.parametrize(
    "changes",
    [["model.hidden=[1e12]"], ["data.resize=1000000"], ["model.name=cnn", "data.resize=1000000"]],
    ids=["hidden", "resize", "cnn-resize"],
)
def test_summary_of_absurd_sizes_is_one_line(cli, digits_config, changes):
    sets = [arg for change in changes for arg in ("--set", change)]
    line = one_line(cli("summary", digits_config, *sets))
    assert "does not fit in this machine's memory" in line and "GiB at once" in line


# Ctrl-C, raised where the `hook` says: as Python imports that module (the moment a Ctrl-C in
# the first seconds lands in), as if the user had pressed it there.
CTRL_C_AT = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if {when}:
            sys.meta_path.remove(self)
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
"""


@pytest.mark.parametrize(
    "when, says",
    [
        ('name == "typer"', "interrupted: stopped by Ctrl-C while dltrain was starting"),
        (  # torch half imported: torch.nn and others are in sys.modules, torch is not
            'name == "torch.optim"',
            "interrupted: stopped by Ctrl-C; nothing was written",
        ),
    ],
    ids=["starting", "importing-torch"],
)
def test_ctrl_c_while_importing_is_one_line_and_130(trained, when, says):
    before = files(trained)
    result = run(["eval", "--ckpt", trained / "best.pt"], CTRL_C_AT.format(when=when))
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == says
    assert files(trained) == before


def test_ctrl_c_during_eval_says_nothing_was_written(cli, trained, monkeypatch):
    import dltrain.tools.evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dltrain.tools.evaluation, "evaluate", interrupted)
    before = files(trained)
    result = cli("eval", "--ckpt", trained / "best.pt")
    assert result.exit_code == 130
    assert result.stderr.strip() == "interrupted: stopped by Ctrl-C; nothing was written"
    assert files(trained) == before
