"""MLflow and W&B trackers on real 2-3 epoch digits runs: MLflow read back from a SQLite store
through MlflowClient, W&B from its offline run files; resume, a missing package, a server that
cannot be reached, lr-find, and a config that asks for none."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dltrain.config import Config, from_dict
from dltrain.reporting import trackers
from dltrain.reporting.runs import new_run_dir, read_metrics

SMALL = """\
name: tracked
device: cpu
data: {dataset: digits, batch_size: 64}
model: {name: mlp, hidden: [16]}
train: {epochs: 2, train_eval_size: 200}
"""


@pytest.fixture
def config(write_config, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # MLflow's SQLite store keeps artifacts in ./mlruns
    return write_config(SMALL)


def mlflow_sets(tmp_path: Path) -> list[str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return [
        "--set",
        f"logging.mlflow.tracking_uri={uri}",
        "--set",
        "logging.mlflow.experiment=demo",
    ]


def mlflow_run(tmp_path: Path, run_dir: Path):
    """The MLflow run trackers.json names, read back from the store, and the client."""
    from mlflow import MlflowClient

    ids = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(ids["tracking_uri"])
    assert ids["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    return client, client.get_run(ids["run_id"])


def steps(client, run, metric: str = "val_acc") -> list[int]:
    return [point.step for point in client.get_metric_history(run.info.run_id, metric)]


def test_mlflow_run_in_a_sqlite_store(cli, config, tmp_path):
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "run"
    result = cli("train", config, *mlflow_sets(tmp_path), "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr
    client, run = mlflow_run(tmp_path, run_dir)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "demo"
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["data.batch_size"] == "64"
    assert run.data.params["model.hidden"] == "[16]"
    assert steps(client, run) == [1, 2]
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [point.value for point in history] == [row["val_acc"] for row in read_metrics(run_dir)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.data.metrics["summary.best_value"] == summary["best_value"]
    assert run.data.tags["summary.status"] == "finished"
    assert run.data.tags["dltrain.best_model"] == str((run_dir / "best.pt").resolve())
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"metrics.csv", "curves.png", "summary.json", "config.yaml"} == artifacts


def test_a_resumed_run_continues_its_mlflow_run(cli, config, tmp_path):
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "run"
    result = cli("train", config, *mlflow_sets(tmp_path), "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    client, first = mlflow_run(tmp_path, run_dir)
    result = cli("train", "--resume", run_dir, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    client, run = mlflow_run(tmp_path, run_dir)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert steps(client, run) == [1, 2, 3]
    assert run.data.params["train.epochs"] == "2"  # MLflow params cannot change
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # A new run in the folder (--force) is a new MLflow run.
    result = cli("train", config, *mlflow_sets(tmp_path), "--run-dir", run_dir, "--force")
    assert result.exit_code == 0, result.output
    client, again = mlflow_run(tmp_path, run_dir)
    assert again.info.run_id != run.info.run_id and steps(client, again) == [1, 2]


def test_a_new_run_forgets_the_tracker_runs_of_the_old(tmp_path):
    cfg = Config()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    (run_dir / "trackers.json").write_text('{"mlflow": {"run_id": "old"}}')
    new_run_dir(cfg, run_dir, force=True)
    assert not (run_dir / "trackers.json").exists()


def test_wandb_offline_run_files(cli, config, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # not the home folder
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    sets = ["--set", "logging.wandb.mode=offline", "--set", "logging.wandb.tags=[digits]"]
    result = cli("train", config, *sets, "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr
    ids = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    assert ids["project"] == "tracked" and ids["entity"] is None
    (folder,) = (run_dir / "wandb").glob(f"offline-run-*-{ids['id']}")
    # The run's records (history, summary, config) are protobuf in one file: names stay readable.
    records = (folder / f"run-{ids['id']}.wandb").read_bytes()
    for name in (b"val_acc", b"summary.best_value", b"optim.lr", b"digits"):
        assert name in records, name
    for name in ("metrics.csv", "curves.png", "summary.json"):
        assert (folder / "files" / name).read_bytes() == (run_dir / name).read_bytes()


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_missing_package_is_one_line_and_exit_2(cli, config, tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    result = cli("train", config, "--set", f"logging.{package}={{}}", "--run-dir", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: logging.{package} needs the {package} package; install it with pip install "
        f"'dltrain[{package}]' (or leave logging.{package} unset)"
    ]
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_an_unreachable_server_is_one_warning_and_the_run_goes_on(cli, config, tmp_path):
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    sets = ["--set", "logging.mlflow.tracking_uri=http://127.0.0.1:9"]
    result = cli("train", config, *sets, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 60  # not MLflow's minutes of retries
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("note: mlflow: ") and "127.0.0.1:9" in line
    assert line.endswith(f"tracking stopped for this run (the run folder {run_dir} has everything)")
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1, 2]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    for name in ("config.yaml", "curves.png", "best.pt", "last.pt"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "trackers.json").exists()


def test_lr_find_tracks_nothing(cli, config, tmp_path):
    pytest.importorskip("mlflow")
    result = cli(
        "lr-find", config, "--steps", "20", "--out", tmp_path / "probe", *mlflow_sets(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_no_tracker_key_imports_nothing(monkeypatch, tmp_path):
    for package in ("mlflow", "wandb", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, package, None)  # any import of them now fails
    assert trackers.build(Config(), tmp_path) == []
    cfg = from_dict({}, "test", ["logging.mlflow={}", "logging.wandb.mode=offline"])
    assert trackers.off(cfg).logging == Config().logging


def test_a_tracker_failing_mid_run_warns_once_and_stops(cli, config, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    log_batch = mlflow.MlflowClient.log_batch

    def second_epoch_fails(self, run_id, metrics=(), **kwargs):
        if any(metric.step == 2 for metric in metrics):
            raise mlflow.MlflowException("the server went away")
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", second_epoch_fails)
    run_dir = tmp_path / "run"
    result = cli("train", config, *mlflow_sets(tmp_path), "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "note: mlflow: MlflowException: the server went away; tracking stopped for this run "
        f"(the run folder {run_dir} has everything)"
    ]
    client, run = mlflow_run(tmp_path, run_dir)
    assert steps(client, run) == [1] and run.info.status == "RUNNING"  # left as it stopped
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_a_run_that_raises_still_draws_its_curves_and_fails_its_tracker_run(config, tmp_path):
    pytest.importorskip("mlflow")
    from dltrain.config import load_config
    from dltrain.reporting.events import EpochEnd
    from dltrain.training.engine import fit

    def broken(event):  # a caller's listener with a bug
        if isinstance(event, EpochEnd):
            raise RuntimeError("a bug in a listener")

    cfg = load_config(config, [arg for arg in mlflow_sets(tmp_path) if arg != "--set"])
    with pytest.raises(RuntimeError, match="a bug in a listener"):
        fit(cfg, tmp_path / "run", [broken])
    assert (tmp_path / "run" / "curves.png").exists()
    client, run = mlflow_run(tmp_path, tmp_path / "run")
    assert run.info.status == "FAILED" and steps(client, run) == []


def test_help_imports_no_tracker_package():
    code = (
        "import sys\n"
        "from dltrain.cli import main\n"
        "sys.argv = ['dltrain', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted({'torch', 'mlflow', 'wandb'} & sys.modules.keys()))\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip().splitlines()[-1] == "[]"
