"""A run that fails before its first epoch (no dataset, a config refused once the folder was
made) leaves no empty run folder for `dltrain runs` to list, and never takes away a folder
it did not make; a run that ended without an epoch is described alike by `runs` and `plot`."""

import json
import shutil

import pytest

from dltrain.config import load_config
from dltrain.errors import DltrainError
from dltrain.reporting import events
from dltrain.reporting.runs import made_run_dir
from dltrain.training.engine import fit
from tests.conftest import DIGITS_SMALL

NO_MNIST = ["--set", "data.dataset=mnist", "--set", "data.download=false"]


def test_a_missing_dataset_leaves_no_run_folder(cli, digits_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", digits_config, *NO_MNIST, "--set", "data.root=nowhere")
    assert result.exit_code == 1 and "dataset not found" in result.stderr
    assert not (tmp_path / "runs").exists()  # runs/digits_small/<time> made, then taken away


@pytest.mark.parametrize("existed", [False, True])
def test_a_folder_named_with_out_goes_only_if_dltrain_made_it(
    cli, digits_config, tmp_path, existed
):
    folder = tmp_path / "mine" / "run"
    if existed:
        folder.mkdir(parents=True)
    args = ["train", digits_config, *NO_MNIST, "--set", f"data.root={tmp_path}", "--out", folder]
    assert cli(*args).exit_code == 1
    assert folder.is_dir() == existed
    assert (tmp_path / "mine").is_dir() == existed


def refuse_at_start(files: tuple[str, ...] = ()):
    """A listener that fails the run as it starts (its config is written by then), after
    writing `files` into the run folder as a tracker might."""

    def listener(event):
        if isinstance(event, events.RunStart):
            for name in files:
                (event.run_dir / name).write_text("a tracker's\n")
            raise DltrainError("refused at the start")

    return listener


@pytest.mark.parametrize(
    "written, kept",
    [
        ((), False),  # config.yaml and the lock alone: nothing of the run
        (("events.out",), True),  # a file dltrain does not know: left where it is
    ],
)
def test_a_run_failing_after_its_config_goes_unless_the_folder_holds_more(tmp_path, written, kept):
    config = tmp_path / "config.yaml"
    config.write_text(DIGITS_SMALL)
    cfg = load_config(config)
    folder, made = made_run_dir(cfg, root=tmp_path / "runs")
    with pytest.raises(DltrainError, match="refused at the start"):
        fit(cfg, folder, [refuse_at_start(written)], new=True, made=made)
    assert folder.exists() == kept
    assert (tmp_path / "runs").exists() == kept  # runs/ and runs/<name>/ were made for it


def test_a_run_without_made_folders_keeps_its_folder(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(DIGITS_SMALL)
    folder = tmp_path / "run"
    with pytest.raises(DltrainError):
        fit(load_config(config), folder, [refuse_at_start()])
    assert (folder / "config.yaml").is_file()  # `--resume` starts it again from epoch 0


def test_a_run_that_failed_in_its_first_epoch_is_failed_for_runs_and_plot(cli, tmp_path):
    """summary.json says failed (a NaN loss in epoch 1), and there is no metrics.csv: before,
    `plot` called it "not a run folder"."""
    config = tmp_path / "config.yaml"
    config.write_text(DIGITS_SMALL)
    folder = tmp_path / "root" / "digits_small" / "20250101-120000"
    folder.mkdir(parents=True)
    shutil.copy(config, folder / "config.yaml")
    summary = {"status": "failed", "stop_reason": "loss became NaN/Inf at epoch 1, step 3"}
    (folder / "summary.json").write_text(json.dumps(summary))
    listed = cli("runs", tmp_path / "root")
    assert "digits_small/20250101-120000" in listed.stdout and "failed" in listed.stdout
    plotted = cli("plot", folder)
    assert plotted.exit_code == 1
    assert plotted.stderr.strip() == (
        f"error: {folder}: a run that recorded no epoch (failed); nothing to draw"
    )
