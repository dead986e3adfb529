"""Every killed run resumes: a SIGKILL at any moment, then `dltrain train --resume RUN`, ends
equal to a run never interrupted (train.deterministic). The kill comes from inside the child
at the exact point a test names (a few lines of Python run before the real CLI), not from a
timer; `dltrain runs` tells a killed run from a running one by the folder's lock."""

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from dltrain.reporting.listing import describe_run
from dltrain.reporting.runs import lock_holder, read_metrics
from tests import alike
from tests.alike import assert_same_run
from tests.test_faults import run, start

CONFIG = """\
name: resumable
seed: 3
device: cpu
data: {dataset: digits, val_split: 0.2, batch_size: 32, augment: {random_crop: 1}}
model: {name: mlp, hidden: [64], dropout: 0.1}
optim: {name: adam, lr: 2e-3}
schedule: {name: cosine}
train: {epochs: 4, deterministic: true, ema: {decay: 0.99}}
checkpoint: {interval: INTERVAL}
"""
BATCHES = 36  # 1,150 training images of the digits at batch 32

# Where the child kills itself: (checkpoint.interval, module, function, on which call, before
# or after the call).
KILL_AT = {
    # after epoch 2's row, nothing written yet (checkpoint.interval 30: checkpoints wait)
    "before_the_first_checkpoint": (
        30,
        "dltrain.reporting.runs",
        "RunFiles.append_metrics",
        2,
        "after",
    ),
    # epoch 2 written, epoch 3's row appended, its checkpoint not yet written
    "between_writes": (0, "dltrain.training.saving", "flush", 3, "before"),
    # epoch 2 written, then killed at step 11 of epoch 3
    "mid_epoch_after_a_write": (
        0,
        "dltrain.training.epoch",
        "_Tally.add",
        2 * BATCHES + 11,
        "before",
    ),
}


def kill_hook(module: str, function: str, call: int, when: str) -> str:
    """Python source that wraps `module.function` to SIGKILL the process at its `call`-th
    call, `when` "before" or "after" it runs."""
    *owners, name = function.split(".")
    return f"""
import importlib, os, signal
holder = importlib.import_module({module!r})
for owner in {owners!r}:
    holder = getattr(holder, owner)
real, calls = getattr(holder, {name!r}), []
def hooked(*args, **kwargs):
    calls.append(1)
    if {when!r} == "before" and len(calls) == {call}:
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if {when!r} == "after" and len(calls) == {call}:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(holder, {name!r}, hooked)
"""


def write_config(folder: Path, interval: float) -> Path:
    text = CONFIG.replace("INTERVAL", str(interval))
    return alike.write_config(folder, text, f"every-{interval}s.yaml")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("whole")
    result = run(["train", write_config(folder, 30), "--run-dir", folder / "run"])
    assert result.returncode == 0, result.stderr
    return folder / "run"


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(KILL_AT))
def test_a_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(
    tmp_path, uninterrupted, moment
):
    interval, *where = KILL_AT[moment]
    config, folder = write_config(tmp_path, interval), tmp_path / "run"
    killed = run(["train", config, "--run-dir", folder], kill_hook(*where))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    saved = [name for name in ("last.pt", "best.pt") if (folder / name).exists()]
    assert saved == ([] if moment == "before_the_first_checkpoint" else ["last.pt", "best.pt"])
    shown = describe_run(folder)
    assert (shown["status"], shown["resumable"]) == ("killed", True)
    resumed = run(["train", "--resume", folder])
    assert resumed.returncode == 0, resumed.stderr
    if moment == "before_the_first_checkpoint":
        assert "no checkpoint was written before the run stopped; starting it again from " in (
            " ".join(resumed.stderr.split())
        )
    else:
        assert "resuming" in resumed.stderr
    assert_same_run(uninterrupted, folder)
    assert describe_run(folder)["status"] == "finished"


def _killed_before_any_checkpoint(folder: Path, config: Path) -> None:
    hook = kill_hook(*KILL_AT["before_the_first_checkpoint"][1:])
    killed = run(["train", config, "--run-dir", folder], hook)
    assert killed.returncode == -signal.SIGKILL and len(read_metrics(folder)) == 2


def test_a_run_that_never_saved_can_be_resumed_or_replaced_but_not_trained_over(cli, tmp_path):
    config = write_config(tmp_path, 30)
    folder = tmp_path / "run"
    _killed_before_any_checkpoint(folder, config)
    again = cli("train", config, "--out", folder, "--set", "train.epochs=1")
    assert again.exit_code == 1
    assert f"continue it with --resume {folder}" in " ".join(again.stderr.split())
    assert len(read_metrics(folder)) == 2  # refused: nothing touched
    forced = cli("train", config, "--out", folder, "--force", "--set", "train.epochs=1", "-q")
    assert forced.exit_code == 0, forced.output
    assert [row["epoch"] for row in read_metrics(folder)] == [1]
    # Resumed with a change: the config's own values, the --set on top, rows from epoch 1.
    other = tmp_path / "other"
    _killed_before_any_checkpoint(other, config)
    resumed = cli("train", "--resume", other, "--set", "train.epochs=3", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert [row["epoch"] for row in read_metrics(other)] == [1, 2, 3]
    assert json.loads((other / "summary.json").read_text())["epochs_run"] == 3


def test_a_finetune_killed_before_its_first_checkpoint_starts_again_as_a_finetune(cli, tmp_path):
    source = tmp_path / "source"
    config = write_config(tmp_path, 30)
    assert cli("train", config, "--out", source, "--set", "train.epochs=1", "-q").exit_code == 0
    folder = tmp_path / "tuned"
    hook = kill_hook(*KILL_AT["before_the_first_checkpoint"][1:])
    args = ["finetune", config, "--from", source / "best.pt", "--out", folder]
    killed = run(args, hook)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = cli("train", "--resume", folder, "-q")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["parent"]["checkpoint"] == str(source / "best.pt")
    assert summary["trainable_params"] < summary["params"]  # the backbone stayed frozen


def test_extending_a_finished_run(cli, tmp_path):
    config = write_config(tmp_path, 30)
    folder = tmp_path / "run"
    assert cli("train", config, "--out", folder, "--set", "train.epochs=2", "-q").exit_code == 0
    more = cli("train", "--resume", folder, "--set", "train.epochs=4", "-q")
    assert more.exit_code == 0, more.output
    assert [row["epoch"] for row in read_metrics(folder)] == [1, 2, 3, 4]
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["status"], summary["epochs_run"]) == ("finished", 4)
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 4


@pytest.mark.slow
def test_a_running_run_is_shown_running_and_its_folder_is_refused(cli, tmp_path):
    config = write_config(tmp_path, 0)
    folder = tmp_path / "run"
    # The child pauses after epoch 1's row, holding the folder's lock.
    pause = """
import time
import dltrain.reporting.runs as runs
real = runs.RunFiles.append_metrics
def paused(self, row):
    real(self, row)
    time.sleep(120)
runs.RunFiles.append_metrics = paused
"""
    proc = start(["train", config, "--run-dir", folder], pause)
    try:
        deadline = time.monotonic() + 60
        while not read_metrics(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_holder(folder) == proc.pid
        assert describe_run(folder)["status"] == "running"
        listed = cli("runs", tmp_path)
        assert listed.stdout.count("running") == 1 and "killed" not in listed.stdout
        for args in (["train", config, "--out", folder, "--force"], ["train", "--resume", folder]):
            refused = cli(*args)
            assert refused.exit_code == 2, refused.output  # RunInUse
            assert f"{folder} is in use: dltrain process {proc.pid} is training in it" in (
                " ".join(refused.stderr.split())
            )
        assert (folder / "config.yaml").exists() and len(read_metrics(folder)) == 1
    finally:
        proc.kill()
        proc.communicate()
    assert lock_holder(folder) is None  # the kernel let go of the lock
    run_ = describe_run(folder)
    assert (run_["status"], run_["resumable"]) == ("killed", True)
    listed = cli("runs", tmp_path)
    assert "killed, resumable" in listed.stdout


def test_a_checkpoint_outside_its_run_folder_goes_on_in_a_new_one(cli, tmp_path, monkeypatch):
    """A best.pt copied next to the user's own metrics.csv: that folder is left as it was."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, 30)
    assert cli("train", config, "--out", "run", "--set", "train.epochs=2", "-q").exit_code == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.csv").write_text("step,loss\n1,0.5\n")
    (mine / "best.pt").write_bytes((tmp_path / "run" / "best.pt").read_bytes())
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    resumed = cli("train", "--resume", mine / "best.pt", "--set", "train.epochs=3", "-q")
    assert resumed.exit_code == 0, resumed.output
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    said = " ".join(resumed.stderr.split())
    assert f"{mine / 'best.pt'} is not in a run folder (no config.yaml beside it)" in said
    [new] = [p for p in (tmp_path / "runs" / "resumable").iterdir()]
    assert f"continuing the run in {Path('runs') / 'resumable' / new.name}" in said
    rows = read_metrics(new)
    assert rows[-1]["epoch"] == 3 and json.loads((new / "summary.json").read_text())["epochs_run"]


def test_an_early_stopped_run_goes_on_when_its_patience_is_raised(cli, tmp_path):
    config = write_config(tmp_path, 30)
    folder = tmp_path / "run"
    sets = [
        "train.epochs=12",
        "train.early_stopping.patience=1",
        "optim.lr=0.05",
        "train.ema.decay=0",
    ]
    args = [a for item in sets for a in ("--set", item)]
    assert cli("train", config, "--out", folder, *args, "-q").exit_code == 0
    stopped = json.loads((folder / "summary.json").read_text())
    assert stopped["status"] == "stopped_early" and stopped["epochs_run"] < 12
    again = cli("train", "--resume", folder, "--set", "train.epochs=20")
    assert again.exit_code == 0
    said = " ".join(again.stderr.split())
    assert "nothing to resume: to train on, raise train.early_stopping.patience (now 1)" in said
    assert len(read_metrics(folder)) == stopped["epochs_run"]  # nothing trained
    more = cli("train", "--resume", folder, "--set", "train.early_stopping.patience=null", "-q")
    assert more.exit_code == 0, more.output
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["status"], summary["epochs_run"]) == ("finished", 12)
    assert [row["epoch"] for row in read_metrics(folder)] == list(range(1, 13))


@pytest.mark.slow
def test_two_runs_started_into_one_folder_at_once_leave_one_run(tmp_path):
    """Before the lock both exited 0 and metrics.csv held epochs 1,1,2,2,3,4,3,4."""
    config = write_config(tmp_path, 0)
    folder = tmp_path / "run"
    procs = [start(["train", config, "--out", folder, "-q"]) for _ in range(2)]
    results = [(proc.wait(timeout=300), proc.communicate()[1]) for proc in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    [refusal] = [err for code, err in results if code == 2]
    assert len(refusal.strip().splitlines()) == 1 and str(folder) in refusal
    assert [row["epoch"] for row in read_metrics(folder)] == [1, 2, 3, 4]
    assert json.loads((folder / "summary.json").read_text())["epochs_run"] == 4
