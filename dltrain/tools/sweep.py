"""`dltrain sweep`: many random trials, each measured on validation; the best is tested once.

A sweep folder (runs/<name>/sweep-<time>/) holds the Optuna study (study.db, SQLite),
sweep.yaml (the base config and the options: all that --resume needs), one normal run folder
per trial (trial-NNN, NNN being Optuna's trial number, so a rerun never collides), and at the
end sweep.csv, sweep.png and best.yaml. The test split is read only by `evaluate_best`.
optuna and torch are imported inside the functions; nothing here prints.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import yaml

from dltrain.config import Config, lower_is_better
from dltrain.errors import DltrainError, Interrupted
from dltrain.files import atomic_write
from dltrain.reporting.runs import new_run_dir
from dltrain.tools.trial import identity, interrupted, resume_hint, run_trial, spaces, trial_rows
from dltrain.training.distributed import usable_cores

SETTINGS, STUDY, BEST = "sweep.yaml", "study.db", "best.yaml"
PRUNE_STARTUP = 3  # completed trials before the median pruner may stop one
PRUNE_WARMUP = 2  # epochs reported before it may (a first epoch says little)

Report = Callable[[dict], None]


def prepare(cfg: Config, folder: Path) -> None:
    """Refuse a new sweep that cannot start (nothing to sweep, a sweep in `folder` already)
    before anything is made; then make the folder, checked to be writable. The sweep command
    does this before it locks the folder (runs.RunLock), `create` again once it holds it."""
    if not cfg.sweep.params:
        raise DltrainError(
            "nothing to sweep: give sweep.params in the config or --param KEY=SPEC, "
            "e.g. --param 'optim.lr=loguniform(1e-4, 1e-1)'"
        )
    if (folder / SETTINGS).exists():
        raise DltrainError(f"{folder} already holds a sweep; continue it: --resume {folder}")
    new_run_dir(cfg, folder)


def create(cfg: Config, folder: Path, options: dict) -> dict:
    """Start a sweep in `folder`: sweep.yaml and the study. `options`: trials, sampler, prune,
    jobs, timeout, storage (None: study.db in the folder). Returns the settings."""
    prepare(cfg, folder)
    metric = cfg.sweep.metric or cfg.train.early_stopping.monitor
    direction = "minimize" if lower_is_better(metric) else "maximize"
    settings = {"config": cfg.model_dump(mode="json"), "metric": metric, "direction": direction}
    settings.update(study=cfg.name, **options)
    open_study(folder, settings)  # first: a storage that cannot be opened leaves no sweep.yaml
    save_settings(folder, settings)
    return settings


def load_settings(folder: Path) -> dict:
    path = Path(folder) / SETTINGS
    if not path.is_file():
        raise DltrainError(f"{folder}: no {SETTINGS}, so not a sweep folder (runs/<name>/sweep-…)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def save_settings(folder: Path, settings: dict) -> None:
    text = yaml.safe_dump(settings, sort_keys=False)
    atomic_write(folder / SETTINGS, lambda handle: handle.write(text.encode()))


def go_on(folder: Path, **how) -> dict:
    """The settings of a resumed sweep: only how it runs may change (trials, jobs, timeout;
    None keeps the saved value). Saved, and returned."""
    settings = load_settings(folder)
    settings.update({key: value for key, value in how.items() if value})
    save_settings(folder, settings)
    return settings


def open_study(folder: Path, settings: dict, sampler=None, pruner=None):
    """The sweep's study (created on first use) in its RDB storage."""
    import optuna
    import sqlalchemy

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # we report through the CLI
    url = settings["storage"] or f"sqlite:///{(Path(folder) / STUDY).resolve()}"
    # Parallel workers share one SQLite file: wait for its lock rather than fail.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        return optuna.create_study(
            storage=optuna.storages.RDBStorage(url, engine_kwargs=engine),
            study_name=settings["study"],
            direction=settings["direction"],
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise DltrainError(f"cannot open the study at {url}: {str(err).splitlines()[0]}") from None


def study_errors(function: Callable) -> Callable:
    """`function(folder, ...)` with Optuna's and its storage's own errors (a trial another
    process finished, a database gone) as one line: they are not ours to show as tracebacks."""

    @functools.wraps(function)
    def wrapper(folder, *args, **kwargs):
        import optuna
        import sqlalchemy

        try:
            return function(folder, *args, **kwargs)
        except (optuna.exceptions.OptunaError, sqlalchemy.exc.SQLAlchemyError) as err:
            reason = (str(err).strip() or type(err).__name__).splitlines()[0]
            raise DltrainError(
                f"sweep {folder}: its study failed ({type(err).__name__}: {reason}); finished "
                f"trials are kept: dltrain sweep --resume {folder}"
            ) from None

    return wrapper


@study_errors
def run(folder: Path, on_trial: Report = lambda row: None) -> dict:
    """Run the trials the sweep still lacks, in `jobs` processes; then write sweep.csv,
    sweep.png and best.yaml. Returns `summarize`."""
    from optuna.trial import Trial, TrialState

    folder = Path(folder)
    settings = load_settings(folder)
    study = open_study(folder, settings)
    # Requeue the trials this sweep left running when it was killed. With the study in the
    # folder no one else works on it; a shared --storage keeps other machines' trials running.
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if settings["storage"] is None or frozen.user_attrs.get("sweep") == identity(folder):
            # A handle on a trial this process did not ask for: Trial takes its storage id.
            interrupted(study, Trial(study, frozen._trial_id), frozen.params)
    remaining = settings["trials"] - _counts(study)[0]
    jobs = max(1, min(settings["jobs"], remaining))
    deadline = time.time() + settings["timeout"] if settings["timeout"] else None
    # Each worker's sampler seed: the config's seed, the trials so far and the worker's index,
    # so a sweep repeats, and a resumed one or a second worker does not redraw the same values.
    seeds = [f"{settings['config']['seed']}-{len(study.trials)}-{i}" for i in range(jobs)]
    if remaining > 0 and jobs == 1:
        work(folder, remaining, seeds[0], deadline, on_trial)
    elif remaining > 0:
        _parallel(folder, remaining, seeds, deadline, on_trial)
    return summarize(folder)


def _parallel(folder: Path, remaining: int, seeds: list[str], deadline, report: Report) -> None:
    """`jobs` processes share the study, the cores and the trials; rows come back by a queue."""
    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
    rows = context.Queue()
    jobs = len(seeds)
    quotas = [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]
    threads = max(1, usable_cores() // jobs)
    workers = [
        context.Process(target=_worker, args=(str(folder), quota, seed, deadline, threads, rows))
        for quota, seed in zip(quotas, seeds, strict=True)
    ]
    for worker in workers:
        worker.start()
    errors = []
    try:
        while any(worker.is_alive() for worker in workers) or not rows.empty():
            try:
                row = rows.get(timeout=0.2)
            except queue.Empty:
                continue
            if "error" in row:
                errors.append(row["error"])
            else:
                report(row)
    except KeyboardInterrupt:
        for worker in workers:  # Ctrl-C reached them too: each records its trial and exits
            worker.join()
        raise resume_hint(folder, 130) from None
    codes = [worker.exitcode for worker in workers]
    if any(code in (130, 143) for code in codes):
        raise resume_hint(folder, max(codes))
    if errors or any(codes):
        raise DltrainError(errors[0] if errors else f"a sweep worker failed (exit codes {codes})")


def _worker(folder: str, quota: int, seed: str, deadline, threads: int, rows) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # torch is not imported yet in this process
    try:
        work(Path(folder), quota, seed, deadline, rows.put)
    except (Interrupted, KeyboardInterrupt) as err:
        raise SystemExit(err.exit_code if isinstance(err, Interrupted) else 130) from None
    except DltrainError as err:
        rows.put({"error": str(err)})
        raise SystemExit(1) from None


@study_errors
def work(folder: Path, quota: int, seed: str, deadline: float | None, report: Report) -> None:
    """One worker: up to `quota` trials, one after another, until the deadline passes or the
    study has all its trials (other machines may share it)."""
    from optuna.pruners import MedianPruner, NopPruner
    from optuna.samplers import RandomSampler, TPESampler

    settings = load_settings(folder)
    sampler = TPESampler if settings["sampler"] == "tpe" else RandomSampler
    pruner = MedianPruner(PRUNE_STARTUP, PRUNE_WARMUP) if settings["prune"] else NopPruner()
    study = open_study(folder, settings, sampler(seed=zlib.crc32(seed.encode())), pruner)
    for _ in range(quota):
        finished, running = _counts(study)
        if (deadline and time.time() >= deadline) or finished + running >= settings["trials"]:
            return
        report(run_trial(study, folder, settings))


def _counts(study) -> tuple[int, int]:
    """(trials finished: complete, pruned or failed but not interrupted; trials running)."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state.is_finished() and not t.user_attrs.get("interrupted") for t in trials)
    return finished, sum(t.state.name == "RUNNING" for t in trials)


def summarize(folder: Path) -> dict:
    """Write sweep.csv, sweep.png and (when a trial completed) best.yaml; return the rows,
    the best row, counts and the files written."""
    from dltrain.reporting.plots import plot_sweep

    settings = load_settings(folder)
    metric, space = settings["metric"], spaces(settings)
    rows = trial_rows(open_study(folder, settings), settings)
    best = next((row for row in rows if row["state"] == "complete"), None)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = list(rows[0]["params"]) if rows else []
    writer.writerow(["trial", "state", *keys, f"best_{metric}", "epochs", "seconds", "reason"])
    for row in rows:
        seconds = None if row["seconds"] is None else round(row["seconds"], 2)
        values = [*row["params"].values(), row["value"], row["epochs"], seconds, row["reason"]]
        writer.writerow([row["trial"], row["state"], *values])
    atomic_write(folder / "sweep.csv", lambda handle: handle.write(buffer.getvalue().encode()))
    written = [folder / "sweep.csv"]
    if any(row["value"] is not None for row in rows):
        written.append(plot_sweep(rows, space, metric, folder / "sweep.png"))
    if best is not None:
        text = (folder / best["folder"] / "config.yaml").read_text(encoding="utf-8")
        chosen = f"trial {best['trial']}, {metric} {best['value']:.4f}"
        header = f"# best of {len(rows)} trials of {folder}: {chosen} (selected on validation)\n"
        atomic_write(folder / BEST, lambda handle: handle.write((header + text).encode()))
        written.append(folder / BEST)
    return {
        "folder": str(folder),
        "metric": metric,
        "trials": settings["trials"],
        "finished": sum(row["state"] not in ("interrupted", "running") for row in rows),
        "rows": rows,
        "log_scaled": [key for key, item in space.items() if item.log],
        "best": best,
        "written": [str(path) for path in written],
    }


@study_errors
def evaluate_best(folder: Path, overrides: list[str] = ()) -> dict:
    """Measure the best trial's best.pt on the test split, once (the run's test ledger records
    it), with `--set` overrides (e.g. device=cpu). Returns the metrics, checkpoint and trial."""
    from dltrain.tools.evaluation import evaluate_checkpoint

    settings = load_settings(folder)
    rows = trial_rows(open_study(folder, settings), settings)
    best = next((row for row in rows if row["state"] == "complete"), None)
    if best is None:
        raise DltrainError(f"{folder}: no trial completed, so there is no best to test")
    run_dir = Path(folder) / best["folder"]
    ckpt = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    return {**evaluate_checkpoint(ckpt, "test", overrides), "trial": best["trial"]}
