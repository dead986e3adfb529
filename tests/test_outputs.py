"""What users see around training: curves, the overfitting signal, output modes, compare,
TensorBoard."""

import json
import sys

import pytest
from PIL import Image

from dltrain.reporting.runs import read_metrics
from dltrain.training.early_stopping import overfitting_note

SMALL = """\
name: {name}
device: cpu
data: {{dataset: digits, batch_size: 64}}
model: {{name: {model}, {extra}}}
train: {{epochs: 2, train_eval_size: 300}}
"""


def _config(write_config, name="out", model="mlp", extra="hidden: [32]"):
    return write_config(SMALL.format(name=name, model=model, extra=extra), f"{name}.yaml")


def test_training_writes_curves_and_the_honest_gap(cli, tmp_path, write_config):
    result = cli("train", _config(write_config), "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "run" / "curves.png") as image:
        assert image.size == (1200, 500)
    rows = read_metrics(tmp_path / "run")
    assert {"train_eval_loss", "train_eval_acc", "gap"} <= set(rows[0])
    for row in rows:
        assert row["gap"] == pytest.approx(row["train_eval_acc"] - row["val_acc"])
    assert "gap " in result.stdout and "train-val gap" in result.stdout


def _rows(val, train):
    return [
        {"epoch": i + 1, "val_acc": v, "train_eval_acc": t}
        for i, (v, t) in enumerate(zip(val, train, strict=True))
    ]


@pytest.mark.parametrize(
    "val, train, expected",
    [
        (
            [0.8, 0.9, 0.9, 0.9, 0.9],
            [0.8, 0.9, 0.93, 0.95, 0.97],
            "flat since epoch 2 while train accuracy rose 7 points",
        ),
        ([0.8, 0.9, 0.9, 0.9, 0.9], [0.8, 0.9, 0.9, 0.91, 0.91], None),  # train flat too
        ([0.8, 0.85, 0.88, 0.9, 0.92], [0.8, 0.9, 0.93, 0.95, 0.97], None),  # val still rising
        ([0.8, 0.9, 0.9], [0.8, 0.9, 0.99], None),  # not enough epochs
    ],
)
def test_overfitting_note_table(val, train, expected):
    note = overfitting_note(_rows(val, train))
    if expected is None:
        assert note is None
    else:
        assert expected in note and "try weight_decay, dropout, augmentation" in note


def test_quiet_and_json_modes(cli, tmp_path, write_config):
    config = _config(write_config)
    quiet = cli("train", config, "--run-dir", tmp_path / "q", "--quiet")
    assert quiet.exit_code == 0 and "epoch 1/2" not in quiet.stdout and "summary" in quiet.stdout
    as_json = cli("train", config, "--run-dir", tmp_path / "j", "--json")
    assert as_json.exit_code == 0
    summary = json.loads(as_json.stdout)
    assert summary["run_dir"] == str(tmp_path / "j") and summary["epochs_run"] == 2
    evaluated = cli("eval", "--ckpt", tmp_path / "j" / "best.pt", "--json")
    assert json.loads(evaluated.stdout)["acc"] == summary["best_metrics"]["val_acc"]


def test_compare_trains_each_config_with_seeds(cli, tmp_path, write_config):
    mlp = _config(write_config, "a_mlp")
    cnn = _config(write_config, "a_cnn", "cnn", "channels: [8, 16]")
    result = cli("compare", mlp, cnn, "--seeds", "2", "--out", tmp_path / "cmp", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [row["config"] for row in out["configs"]] == ["a_mlp", "a_cnn"]
    for row in out["configs"]:
        assert len(row["val_accs"]) == 2 and 0 < row["val_acc_mean"] <= 1
    # Every run used the same validation split, whatever its seed.
    splits = {
        json.loads((tmp_path / "cmp" / c / f"seed-{k}" / "summary.json").read_text())["sizes"][
            "val"
        ]
        for c in ("a_mlp", "a_cnn")
        for k in (0, 1)
    }
    assert len(splits) == 1
    with Image.open(tmp_path / "cmp" / "compare.png") as image:
        assert image.size[0] > 0
    table = cli("compare", mlp, cnn, "--seeds", "1", "--out", tmp_path / "cmp2")
    assert "best val acc" in table.stdout and "±" in table.stdout


def test_compare_refuses_different_data(cli, tmp_path, write_config):
    mlp = _config(write_config, "b_mlp")
    other = write_config("data: {dataset: fake}\nmodel: {name: mlp}\n", "other.yaml")
    result = cli("compare", mlp, other, "--out", tmp_path / "cmp")
    assert result.exit_code == 1 and "compare needs the same data" in result.stderr


def test_tensorboard_writes_events(cli, tmp_path, write_config):
    pytest.importorskip("tensorboard")
    config = write_config(
        SMALL.format(name="tb", model="mlp", extra="hidden: [16]")
        + "logging: {tensorboard: true}\n"
    )
    result = cli("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    log.Reload()
    assert {"loss/train", "acc/val", "acc/train_eval", "lr"} <= set(log.Tags()["scalars"])
    assert len(log.Scalars("acc/val")) == 2


def test_tensorboard_missing_is_one_line(cli, tmp_path, write_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    config = write_config(
        SMALL.format(name="tb", model="mlp", extra="hidden: [16]")
        + "logging: {tensorboard: true}\n"
    )
    result = cli("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 2  # a missing extra, like a config problem
    assert result.stderr.strip().splitlines() == [
        "error: logging.tensorboard: true needs the tensorboard package; install it with pip "
        "install 'dltrain[tensorboard]' (or set logging.tensorboard: false)"
    ]
    assert not (tmp_path / "run" / "metrics.csv").exists()


# --- issue 26's rough edges, one test each ----------------------------------------------------


def test_compare_with_one_config_is_refused(cli, tmp_path):
    result = cli("compare", "configs/digits_mlp.yaml", "--out", tmp_path / "c")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: dltrain compare: needs two or more configs to compare, got 1; to train one "
        "config, use dltrain train"
    )
    assert not (tmp_path / "c").exists()


def test_an_oversized_val_split_is_a_config_error(cli, tmp_path):
    result = cli(
        "train", "configs/digits_mlp.yaml", "--set", "data.val_split=5000", "--out", tmp_path / "r"
    )
    assert result.exit_code == 2
    assert "data.val_split=5000 asks for 5,000 of the 1,438 samples for that split" in result.stderr


def test_a_yaml_file_given_as_a_checkpoint_is_named_as_such(cli, tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "seven.png")
    result = cli("predict", "--ckpt", "configs/digits_mlp.yaml", tmp_path / "seven.png")
    assert result.exit_code == 1
    assert "configs/digits_mlp.yaml is a YAML config, not a checkpoint" in result.stderr
    assert "damaged" not in result.stderr
    (tmp_path / "notes.txt").write_text("not a checkpoint at all")
    result = cli("predict", "--ckpt", tmp_path / "notes.txt", tmp_path / "seven.png")
    assert result.exit_code == 1
    assert "notes.txt is not a PyTorch file, not a checkpoint" in result.stderr


def test_counts_agree_with_their_nouns():
    from dltrain.cli.app import count

    assert [count(n, "epoch") for n in (1, 2, 1000)] == ["1 epoch", "2 epochs", "1,000 epochs"]


def test_a_closed_pipe_ends_eval_quietly(tmp_path):
    """`dltrain eval ... | head -1`: exit 141 (128 + SIGPIPE) and nothing on stderr."""
    import subprocess

    exe = [sys.executable, "-m", "dltrain"]
    train = [*exe, "train", "configs/digits_mlp.yaml", "--set", "train.epochs=1", "-q"]
    subprocess.run([*train, "--out", str(tmp_path / "r")], check=True, capture_output=True)
    reader = subprocess.Popen(["head", "-1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    evaluated = subprocess.run(
        [*exe, "eval", "--ckpt", str(tmp_path / "r" / "best.pt")],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader.stdin.close()
    assert reader.stdout.read().startswith(b"val: accuracy")
    reader.wait()
    assert evaluated.returncode == 141 and evaluated.stderr == ""
