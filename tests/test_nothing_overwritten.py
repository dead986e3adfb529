"""Issue 22, items 4, 6 and 8: commands never overwrite what they did not create. export
refuses existing files without --force and checkpoints always; a sweep folder belongs to one
process; run names are plain folder names; --out refuses another tool's files; eval says where
a mid-epoch checkpoint is."""

import shutil
import time

import pytest

from dltrain.config import validate
from dltrain.reporting.events import BatchEnd, EpochStart
from dltrain.training import checkpoint
from dltrain.training.engine import fit
from tests.test_faults import start

CONFIG = """\
name: kept
device: cpu
data: {dataset: digits, val_split: 0.2, batch_size: 32}
model: {name: mlp, hidden: [16]}
train: {epochs: 1}
checkpoint: {interval: 0}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run, shared: the refusals must leave it unchanged."""
    from typer.testing import CliRunner

    from dltrain.cli import app

    root = tmp_path_factory.mktemp("kept")
    (root / "config.yaml").write_text(CONFIG)
    result = CliRunner().invoke(app, ["train", str(root / "config.yaml"), "--out", str(root / "r")])
    assert result.exit_code == 0, result.output
    return root / "r"


def files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def one_line(result, code: int | tuple = 1):
    assert result.exit_code in (code if isinstance(code, tuple) else (code,)), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return " ".join(lines[0].split())


# --- item 4: export --out -------------------------------------------------------------------


def export(cli, ckpt, out, *extra):
    return cli("export", "--ckpt", ckpt, "--format", "torchscript", "--out", out, *extra)


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_export_never_writes_over_a_checkpoint(cli, trained, tmp_path, force):
    other = shutil.copy(trained / "last.pt", tmp_path / "other.pt")  # a checkpoint, not --ckpt's
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((trained / "last.pt").read_bytes()[:2000])  # truncated: won't load
    run_before, outside_before = files(trained), files(tmp_path)
    never = "is a dltrain checkpoint: export never writes over one, even with --force"
    cases = [  # --ckpt, --out, what the line says
        (other, trained / "last.pt", never),  # the case: over the resumable last.pt
        (trained / "best.pt", other, never),
        (trained / "best.pt", damaged, never),
        (trained / "best.pt", trained / "best.pt", "is the checkpoint itself"),
        (trained / "best.pt", trained / "last.pt", "is the checkpoint itself"),  # a hard link
    ]
    for ckpt, out, says in cases:
        assert says in one_line(export(cli, ckpt, out, *force)), (ckpt, out)
    assert files(trained) == run_before and files(tmp_path) == outside_before
    assert checkpoint.load(trained / "last.pt")["epoch"] == 1  # still resumable


def test_export_replaces_an_existing_file_only_with_force(cli, trained, tmp_path):
    out = tmp_path / "model.ts"
    out.write_bytes(b"the user's own file")
    line = one_line(export(cli, trained / "best.pt", out))
    says = "already exists; give --force to replace it, or name another file with --out"
    assert line == f"error: {out} {says}"
    assert out.read_bytes() == b"the user's own file" and sorted(tmp_path.iterdir()) == [out]
    sidecar_only = tmp_path / "fresh.ts.json"  # export writes fresh.ts and its sidecar
    sidecar_only.write_text("{}")
    line = one_line(export(cli, trained / "best.pt", tmp_path / "fresh.ts"))
    assert line == f"error: {sidecar_only} {says}"
    assert sidecar_only.read_text() == "{}"
    result = export(cli, trained / "best.pt", out, "--force")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() != b"the user's own file"


# --- item 6: one process per sweep folder ---------------------------------------------------

SWEEP = CONFIG.replace("name: kept", "name: swept")


def test_a_second_sweep_resume_is_refused_while_the_first_runs(cli, write_config, tmp_path):
    config, out = write_config(SWEEP), tmp_path / "s"
    param = ["--param", "optim.lr=loguniform(1e-3, 1e-2)"]
    first = cli("sweep", config, "--trials", 1, "--out", out, *param)
    assert first.exit_code == 0, first.output
    ready = tmp_path / "in-trial"
    pause = f"""
import time
import dltrain.training.engine
def paused(*args, **kwargs):  # trial 1 asked for and running: hold the sweep there
    open({str(ready)!r}, "w").close()
    time.sleep(120)
dltrain.training.engine.fit = paused
"""
    proc = start(["sweep", "--resume", out, "--trials", 2], pause)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first --resume never started its trial"
            time.sleep(0.05)
        before = files(out)
        # exit 2 once runs.RunInUse (issue 22, item 3) is in; 1 before
        line = one_line(cli("sweep", "--resume", out), code=(1, 2))
        assert line.startswith(f"error: {out} is in use: dltrain process {proc.pid}")
        assert files(out) == before  # study.db, sweep.yaml, sweep.csv untouched
    finally:
        proc.kill()
        proc.communicate()


def test_an_optuna_error_is_one_line(cli, write_config, tmp_path, monkeypatch):
    import optuna

    import dltrain.tools.trial

    def finished_elsewhere(study, trial, *args):
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"Cannot tell a COMPLETE trial: Trial#{trial.number} has already finished."
        )

    monkeypatch.setattr(dltrain.tools.trial, "_tell", finished_elsewhere)
    out = tmp_path / "s"
    param = ["--param", "optim.lr=loguniform(1e-3, 1e-2)"]
    result = cli("sweep", write_config(SWEEP), "--trials", 1, "--out", out, *param)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()  # the sweep's start line, then one error
    assert len(lines) == 2 and lines[0].startswith(f"sweep {out}: 1 trial of"), result.stderr
    error = " ".join(lines[1].split())
    assert error.startswith(f"error: sweep {out}: its study failed (UpdateFinishedTrialError: ")
    assert error.endswith(f"finished trials are kept: dltrain sweep --resume {out}")


# --- item 8: the small ones -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "...", ".hidden", "a/b", "../up"])
def test_run_names_are_plain_folder_names(cli, write_config, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # `name: ..` trained into ./<time>/: here, if anywhere
    config = write_config(CONFIG.replace("name: kept", f"name: '{name}'"))
    line = one_line(cli("train", config), code=2)
    assert f"name: got '{name}'; expected a plain folder name" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.yaml"]


def test_names_with_inner_dots_still_work(write_config):
    assert validate({"name": "v1.2-final_b"}).name == "v1.2-final_b"


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_out_holding_another_tools_files_is_refused(cli, write_config, tmp_path, force):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "metrics.csv").write_text("step,loss\n1,0.5\n")
    (folder / "notes.txt").write_text("mine")
    before = files(folder)
    line = one_line(cli("train", write_config(CONFIG), "--out", folder, *force))
    assert line.startswith(f"error: --out {folder} holds metrics.csv but no config.yaml")
    assert "not with --force either" in line
    assert files(folder) == before and sorted(p.name for p in folder.iterdir()) == [
        "metrics.csv",
        "notes.txt",
    ]


def test_out_folder_with_files_of_its_own_is_fine(cli, write_config, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")  # not a run file's name: left alone
    result = cli("train", write_config(CONFIG), "--out", folder)
    assert result.exit_code == 0, result.output
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "last.pt").exists()


def test_eval_of_a_mid_epoch_checkpoint_says_where_it_is(cli, tmp_path):
    cfg = validate({**_config(), "train": {"epochs": 2}})
    seen = {"epoch": 0}

    def stop_mid_epoch_2(event):
        if isinstance(event, EpochStart):
            seen["epoch"] = event.epoch
        if isinstance(event, BatchEnd) and seen["epoch"] == 2 and event.step == 5:
            return "a test stops here"
        return None

    fit(cfg, tmp_path / "r", [stop_mid_epoch_2])
    saved = checkpoint.load(tmp_path / "r" / "last.pt")
    assert saved["epoch"] == 1 and saved["partial"]["epoch"] == 2
    steps = saved["partial"]["steps"]
    result = cli("eval", "--ckpt", tmp_path / "r" / "last.pt")
    assert result.exit_code == 0, result.output
    assert f"last.pt, epoch 2, step {steps} (mid-epoch))" in " ".join(result.stdout.split())
    result = cli("eval", "--ckpt", tmp_path / "r" / "best.pt")
    assert "best.pt, epoch 1)" in " ".join(result.stdout.split())


def _config() -> dict:
    import yaml

    return yaml.safe_load(CONFIG)
