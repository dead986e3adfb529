"""dltrain sweep: trials on digits selected on validation; the test split untouched unless asked."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import DIGITS_SMALL

REPO = Path(__file__).resolve().parents[1]
LR, DROPOUT = "optim.lr=loguniform(1e-4, 1e-1)", "model.dropout=uniform(0, 0.5)"


def sweep_args(config: Path, out: Path, trials: int = 4, *extra) -> list:
    return ["sweep", config, "--trials", trials, "--out", out, "--param", LR, "--param", DROPOUT,
            *extra]  # fmt: skip


def read_csv(folder: Path) -> list[dict]:
    with open(folder / "sweep.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_sweep_writes_table_files_and_normal_runs(cli, digits_config, tmp_path, monkeypatch):
    import dltrain.training.session

    splits_read = []
    make_loader = dltrain.training.session.make_loader

    def watched(splits, name, *args, **kwargs):
        splits_read.append(name)
        return make_loader(splits, name, *args, **kwargs)

    monkeypatch.setattr(dltrain.training.session, "make_loader", watched)
    out = tmp_path / "sweep"
    result = cli(*sweep_args(digits_config, out))
    assert result.exit_code == 0, result.output
    assert "best val_acc" in result.stdout and "best: trial" in result.stdout
    for name in ("study.db", "sweep.yaml", "sweep.csv", "sweep.png", "best.yaml"):
        assert (out / name).is_file(), name
    rows = read_csv(out)
    assert sorted(int(row["trial"]) for row in rows) == [0, 1, 2, 3]
    assert {row["state"] for row in rows} == {"complete"}
    accs = [float(row["best_val_acc"]) for row in rows]
    assert accs == sorted(accs, reverse=True)  # best first
    for row in rows:
        lr, dropout = float(row["optim.lr"]), float(row["model.dropout"])
        assert 1e-4 <= lr <= 1e-1 and 0 <= dropout <= 0.5
        # Each trial is a normal run: its config holds the sampled values and no sweep.
        config = yaml.safe_load(
            (out / f"trial-{int(row['trial']):03d}" / "config.yaml").read_text()
        )
        assert config["optim"]["lr"] == pytest.approx(lr)
        assert config["model"]["dropout"] == pytest.approx(dropout)
        assert config["sweep"]["params"] == {}
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(float(rows[0]["optim.lr"]))
    # The test split was never fed to a model, and nothing recorded a test use.
    assert "test" not in splits_read and "val" in splits_read
    assert not list(out.rglob("test_ledger.jsonl")) and not list(out.rglob("eval-test.json"))
    listed = cli("runs", out, "--json")  # trial folders are runs
    assert listed.exit_code == 0 and len(yaml.safe_load(listed.stdout)) == 4


@pytest.mark.parametrize(
    "param, message",
    [
        ("optim.lrr=uniform(0, 1)", "params.optim.lrr: unknown config key; did you mean optim.lr?"),
        ("optim.lr=loguniform(0, 1e-1)", "a log scale needs lo > 0"),
        ("model.dropout=uniform(0.5, 0.1)", "lo must be below hi"),
        ("data.batch_size=int(16, 25.5, log)", "with whole numbers"),
        ("optim.lr=logunifrom(1e-4, 1e-1)", "did you mean loguniform?"),
        ("optim.name=choice([])", "expected a non-empty list"),
        ("optim.name=choice([sgd, adem])", "'adem' is not one of sgd, adam"),
        ("model.dropout=uniform(0, 1.5)", "got 1.5; expected less than 1"),
        ("optim=uniform(0, 1)", "optim is a section; name a key in it"),
        ("optim.lr", "expected KEY=SPEC"),
    ],
)  # fmt: skip
def test_bad_search_space_is_one_config_error_before_any_data(cli, digits_config, tmp_path, param,
                                                              message):  # fmt: skip
    result = cli("sweep", digits_config, "--param", param, "--out", tmp_path / "s")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "s").exists()


def test_sweep_section_in_the_config_and_nothing_to_sweep(cli, write_config, tmp_path):
    section = "sweep:\n  trials: 2\n  params:\n    optim.lrr: uniform(0, 1)\n"
    result = cli("sweep", write_config(DIGITS_SMALL + section), "--out", tmp_path / "s")
    assert result.exit_code == 2 and "did you mean optim.lr?" in result.stderr
    result = cli("sweep", write_config(DIGITS_SMALL, "plain.yaml"), "--out", tmp_path / "s")
    assert result.exit_code == 1 and "nothing to sweep" in result.stderr


def test_failed_trials_are_recorded_and_the_sweep_goes_on(cli, digits_config, tmp_path):
    out = tmp_path / "s"
    args = ["sweep", digits_config, "--trials", 4, "--out", out, "--set", "optim.name=sgd"]
    result = cli(*args, "--param", "optim.lr=choice([1e-2, 1e12])")
    rows = read_csv(out)
    assert len(rows) == 4  # every trial ran, whatever the earlier ones did
    for row in rows:
        if float(row["optim.lr"]) > 1:
            assert row["state"] == "fail" and "NaN/Inf" in row["reason"]
        else:
            assert row["state"] == "complete" and not row["reason"]
    completed = any(row["state"] == "complete" for row in rows)
    assert result.exit_code == (0 if completed else 1), result.output


def test_bad_combination_fails_its_trial_with_the_reason(cli, digits_config, tmp_path):
    out = tmp_path / "s"
    nesterov = ["--set", "optim.name=sgd", "--set", "optim.nesterov=true"]
    result = cli("sweep", digits_config, "--trials", 2, "--out", out, *nesterov,
                 "--param", "optim.momentum=choice([0.0])")  # fmt: skip
    assert result.exit_code == 1 and "no trial completed" in result.stderr
    rows = read_csv(out)
    assert [row["state"] for row in rows] == ["fail", "fail"]
    assert all("Nesterov momentum needs momentum > 0" in row["reason"] for row in rows)
    assert "failed: optim.nesterov" in result.stdout


def test_test_best_measures_the_best_trial_once(cli, digits_config, tmp_path):
    out = tmp_path / "s"
    result = cli(*sweep_args(digits_config, out, 2, "--set", "train.epochs=1", "--test-best"))
    assert result.exit_code == 0, result.output
    assert "test (trial" in result.stdout and "used 1 time" in result.stderr
    ledgers = list(out.rglob("test_ledger.jsonl"))
    assert len(ledgers) == 1 and len(ledgers[0].read_text().splitlines()) == 1
    best = read_csv(out)[0]
    assert ledgers[0].parent.name == f"trial-{int(best['trial']):03d}"
    again = cli("sweep", "--resume", out)  # no trials left, no --test-best: no test use
    assert again.exit_code == 0 and len(ledgers[0].read_text().splitlines()) == 1


def test_pruner_stops_a_trial_worse_than_the_median(digits_config, tmp_path):
    from dltrain.config import load_config
    from dltrain.tools import sweep

    cfg = load_config(digits_config, ["train.epochs=3"], [LR])
    out = tmp_path / "s"
    options = {"trials": 4, "sampler": "random", "prune": True, "jobs": 1, "timeout": None}
    sweep.create(cfg, out, {**options, "storage": None})
    study = sweep.open_study(out, sweep.load_settings(out))
    for lr in (3e-3, 3e-3, 3e-3, 1e-4):  # three good trials, then a hopeless one
        study.enqueue_trial({"optim.lr": lr})
    seen = []
    result = sweep.run(out, seen.append)
    assert [row["state"] for row in seen] == ["complete"] * 3 + ["pruned"]
    pruned = seen[-1]
    assert pruned["epochs"] == 2 and "pruned by the sweep at epoch 2" in pruned["reason"]
    assert result["best"]["state"] == "complete"


def test_resume_rejects_new_config_options(cli, tmp_path):
    result = cli("sweep", "--resume", tmp_path, "--set", "optim.lr=0.1")
    assert result.exit_code == 1 and "drop --set" in result.stderr


def test_timeout_stops_starting_trials_and_says_how_to_go_on(cli, digits_config, tmp_path):
    out = tmp_path / "s"
    result = cli(*sweep_args(digits_config, out, 3, "--timeout", "1e-9"))
    assert result.exit_code == 1 and "no trial completed" in result.stderr
    assert f"0 of 3 trials finished; run the rest with: dltrain sweep --resume {out}" in " ".join(
        result.stderr.split()
    )


@pytest.mark.slow
def test_parallel_jobs_run_the_right_number_of_trials(cli, digits_config, tmp_path):
    out = tmp_path / "s"
    result = cli(*sweep_args(digits_config, out, 4, "--jobs", 2, "--set", "train.epochs=1"))
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert sorted(int(row["trial"]) for row in rows) == [0, 1, 2, 3]
    assert {row["state"] for row in rows} == {"complete"}
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-00{i}" for i in range(4)]


@pytest.mark.slow
def test_resume_after_a_kill_runs_only_the_remaining_trials(cli, digits_config, tmp_path):
    out = tmp_path / "s"
    args = [str(a) for a in sweep_args(digits_config, out, 4, "--set", "train.epochs=3")]
    child = subprocess.Popen(
        [sys.executable, "-m", "dltrain", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out / "trial-001" / "config.yaml").exists():  # trial 0 is told, 1 is training
        assert child.poll() is None and time.monotonic() < deadline, "the sweep did not get going"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    first = {p.name: p.stat().st_mtime_ns for p in (out / "trial-000").iterdir()}
    result = cli("sweep", "--resume", out)
    assert result.exit_code == 0, result.output
    rows = {int(row["trial"]): row for row in read_csv(out)}
    finished = [n for n, row in rows.items() if row["state"] != "interrupted"]
    assert len(finished) == 4 and rows[1]["state"] == "interrupted"
    assert sorted(rows) == [0, 1, 2, 3, 4]  # one new trial per number: no folder reused
    assert rows[2]["optim.lr"] == rows[1]["optim.lr"]  # the interrupted values ran again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trial-000").iterdir()} == first


def test_sweep_json_is_one_object_and_quiet_the_best_line(cli, digits_config, tmp_path):
    import json

    as_json = cli(*sweep_args(digits_config, tmp_path / "j", 1), "--json")
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.stdout)  # nothing else on stdout
    assert result["best"]["trial"] == 0 and len(result["rows"]) == 1 and result["test"] is None
    assert result["folder"] == str(tmp_path / "j") and "trial 0" not in as_json.stderr
    quiet = cli(*sweep_args(digits_config, tmp_path / "q", 1), "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout.startswith("best: trial 0") and len(quiet.stdout.splitlines()) == 1
    assert "trial 0" not in quiet.stderr  # no progress lines
