"""The `dltrain` command line: the only module that prints or exits.

torch is imported inside the commands that train or evaluate, never at module level, so
`dltrain --help` and `dltrain config …` start fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dltrain import __version__
from dltrain.errors import DltrainError, Interrupted

app = typer.Typer(
    help="Train image classifiers from YAML configs.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs and their schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: KEY=VALUE (dotted key), repeatable."),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")
]


def _main_process() -> bool:
    """In a distributed run (torchrun sets RANK) only rank 0 prints. Read from the environment,
    not dltrain.distributed, which imports torch: --help and config commands stay fast."""
    return os.environ.get("RANK", "0") == "0"


def _out() -> Console:
    return Console(highlight=False, quiet=not _main_process())


def _err() -> Console:
    return Console(stderr=True, highlight=False, quiet=not _main_process())


def _fail(err: DltrainError) -> None:
    lines = str(err).splitlines() or [type(err).__name__]
    console = _err()
    label, style = (
        ("interrupted", "yellow") if isinstance(err, Interrupted) else ("error", "bold red")
    )
    for line in lines:
        console.print(f"{label}: {line}", style=style, markup=False, soft_wrap=True)
    raise typer.Exit(err.exit_code)


def _friendly(command):
    """Turn our errors into red lines and exit codes; anything else is a bug and keeps its
    traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        together = False  # distributed: did every rank get here?
        try:
            result = command(*args, **kwargs)
            together = True
            return result
        except DltrainError as err:
            together = err.all_ranks
            _fail(err)
        except KeyboardInterrupt:  # before training started: nothing to save
            _fail(Interrupted("stopped by Ctrl-C before training started", 130))
        finally:
            distributed = sys.modules.get("dltrain.distributed")  # never imported: no group
            if distributed is not None:
                distributed.stop(together)

    return wrapper


def _version(value: bool) -> None:
    if value:
        _out().print(f"dltrain {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Train image classifiers from YAML configs."""


# --- train -------------------------------------------------------------------------------


class TrainReport:
    """Shows training as it happens: a live bar on a terminal, one line per epoch otherwise."""

    def __init__(self, console: Console, mode: str = "normal"):
        self.console = console
        self.mode = mode  # normal, quiet (the final summary only) or json (one object)
        self.live = console.is_terminal and mode == "normal"
        self.bar = None
        self.last_refresh = 0.0

    def __call__(self, event: str, info: dict) -> None:
        if self.mode == "normal" or event in ("note", "end"):
            getattr(self, f"on_{event}")(info)

    def on_start(self, info: dict) -> None:
        sizes = info["sizes"]
        self.console.print(
            f"run {info['run_dir']}  device {info['device']} ({info['precision']})"
            + (f" × {info['processes']} processes" if info.get("processes", 1) > 1 else "")
            + "  "
            f"params {info['params']:,}  "
            f"train/val/test {sizes['train']}/{sizes['val']}/{sizes['test']}",
            soft_wrap=True,
            markup=False,
        )
        self.epochs, self.batches = info["epochs"], info["batches"]
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=4,
                transient=True,
            )
            self.bar.start()

    def on_note(self, info: dict) -> None:
        _note(info["text"])

    def on_epoch_start(self, info: dict) -> None:
        self.epoch_started = time.perf_counter()
        if self.bar is not None:
            self.task = self.bar.add_task(
                "", total=self.batches, epoch=info["epoch"], epochs=self.epochs, rate=""
            )

    def on_batch(self, info: dict) -> None:
        now = time.perf_counter()
        # A few refreshes a second are enough for a human; more would slow short steps.
        if self.bar is None or now - self.last_refresh < 0.2:
            return
        self.last_refresh = now
        rate = info["seen"] / max(now - self.epoch_started, 1e-9)
        self.bar.update(self.task, completed=info["step"], rate=f"{rate:,.0f} samples/s")

    def on_epoch(self, info: dict) -> None:
        row = info["row"]
        if self.bar is not None:
            self.bar.remove_task(self.task)
        mark = "  *best" if info["improved"] else ""
        gap = f"  gap {row['gap']:+.4f}" if row.get("gap") is not None else ""
        self.console.print(
            f"epoch {row['epoch']}/{info['epochs']}  train_loss {row['train_loss']:.4f}  "
            f"train_acc {row['train_acc']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_acc {row['val_acc']:.4f}{gap}  {row['seconds']:.2f}s{mark}",
            soft_wrap=True,
            markup=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def on_end(self, info: dict) -> None:
        self.close()
        summary = info["summary"]
        if self.mode == "json":
            if _main_process():
                print(json.dumps({**summary, "run_dir": info["run_dir"]}))
            return
        best = summary["best_metrics"]
        table = Table(title="summary", show_header=False)
        table.add_row("status", summary["status"].replace("_", " "))
        if summary["stop_reason"]:
            table.add_row("why", summary["stop_reason"])
        table.add_row("best epoch", f"{summary['best_epoch']} of {summary['epochs_run']}")
        table.add_row("val accuracy", f"{best['val_acc']:.4f}")
        table.add_row("val loss", f"{best['val_loss']:.4f}")
        table.add_row("train accuracy", f"{best['train_acc']:.4f} (running, in train mode)")
        if best.get("gap") is not None:
            table.add_row("train accuracy, eval mode", f"{best['train_eval_acc']:.4f}")
            table.add_row("train-val gap", f"{best['gap']:+.4f}")
        if summary.get("overfitting"):
            table.add_row("overfitting", summary["overfitting"])
        which = "best epoch restored" if summary["restored_best"] else "weights as trained"
        table.add_row("final val accuracy", f"{summary['final_val']['acc']:.4f} ({which})")
        table.add_row("seconds per epoch", f"{summary['seconds_per_epoch']:.2f}")
        table.add_row("run folder", info["run_dir"])
        self.console.print(table)
        if summary["stop_reason"]:
            self.console.print(summary["stop_reason"], markup=False, soft_wrap=True)


RunDirOption = Annotated[
    Path | None, typer.Option("--run-dir", help="Folder for this run's outputs.")
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace a run that --run-dir already holds.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")]
NprocOption = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Train data-parallel in N processes on this machine (torch.distributed, started "
        "through torchrun); data.batch_size is per process.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object (the summary) and nothing else.")
]


def _overrides(set_: list[str] | None, device: str | None) -> list[str]:
    """--set values, with --device as one more override."""
    return list(set_ or []) + ([f"device={device}"] if device else [])


def _mode(quiet: bool, as_json: bool) -> str:
    return "json" if as_json else "quiet" if quiet else "normal"


@app.command()
@_friendly
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config file.")] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue a run: its folder (last.pt) or a checkpoint."),
    ] = None,
    nproc: NprocOption = 1,
) -> None:
    """Train a model from a YAML config, or continue a run with --resume."""
    overrides = _overrides(set_, device)
    mode = _mode(quiet, as_json)
    if resume is None and config is None:
        raise DltrainError("give a config file to train, or --resume RUN_DIR to continue a run")
    if nproc > 1:
        if resume is None:
            from dltrain.config import load_config

            load_config(config, overrides)
            command = ["train", str(config)]
        elif not resume.exists():
            raise DltrainError(f"--resume {resume}: no such run folder or checkpoint")
        else:
            command = ["train", "--resume", str(resume)] + ([str(config)] if config else [])
        _launch(nproc, command, set_, device, run_dir, force, quiet, as_json)
        return
    if resume is not None:
        _resume(resume, config, run_dir, overrides, mode)
        return
    from dltrain.config import load_config

    cfg = load_config(config, overrides)
    _fit(cfg, _run_folder(cfg, run_dir, force), mode)


def _launch(nproc: int, command: list[str], set_, device, run_dir, force, quiet, as_json):
    """`--nproc N`: start N processes through torchrun's launcher, each running `command`
    (e.g. ["train", CONFIG]) with the same options, without --nproc. The caller checks its
    config first, so a bad one fails once, here."""
    from dltrain import distributed

    if distributed.launched():
        raise DltrainError(
            "--nproc starts its own processes; under torchrun, leave it out (torchrun's "
            "--nproc-per-node says how many)"
        )
    args = list(command)
    for item in set_ or []:
        args += ["--set", item]
    args += ["--device", device] if device else []
    args += ["--run-dir", str(run_dir)] if run_dir is not None else []
    flags = {"--force": force, "--quiet": quiet, "--json": as_json}
    args += [flag for flag, on in flags.items() if on]
    code = distributed.launch(nproc, args)
    if code:
        raise typer.Exit(code)


def _run_folder(cfg, run_dir: Path | None, force: bool) -> Path:
    """The new run's folder. Under torchrun, rank 0 makes it and tells the others."""
    from dltrain import distributed
    from dltrain.runs import new_run_dir

    if not distributed.launched():
        return new_run_dir(cfg, run_dir, force=force)
    distributed.start(cfg.device)
    return distributed.from_main(lambda: new_run_dir(cfg, run_dir, force=force))


def _fit(cfg, folder: Path, mode: str = "normal", **kwargs) -> None:
    from dltrain.engine import fit

    report = TrainReport(_out(), mode)
    try:
        fit(cfg, folder, progress=report, **kwargs)
    finally:
        report.close()


def _resume(
    target: Path, config: Path | None, run_dir: Path | None, overrides: list[str], mode: str
):
    if config is not None or run_dir is not None:
        raise DltrainError(
            "--resume continues a run in its own folder with its saved config; drop CONFIG and "
            "--run-dir (use --set, e.g. --set train.epochs=20, to change values)"
        )
    from dltrain.checkpoint import find_resume
    from dltrain.config import apply_overrides, validate

    payload, path, notes = find_resume(target)
    for note in notes:
        _note(note)
    data = payload["config"]
    cfg = validate(data, f"{path} (config)", apply_overrides(data, overrides, f"{path} (config)"))
    stopped = payload["early_stopping"]["stopped_epoch"]
    if stopped is not None or payload["epoch"] >= cfg.train.epochs:
        why = f"stopped early at epoch {stopped}" if stopped else "finished all its epochs"
        _note(
            f"{path.parent}: the run {why} (epoch {payload['epoch']} of {cfg.train.epochs}); "
            "nothing to resume (raise train.epochs with --set to train longer)"
        )
        return
    _fit(cfg, path.parent, mode, resume=payload)


def _note(text: str) -> None:
    _err().print(f"note: {text}", style="yellow", markup=False, soft_wrap=True)


@app.command()
@_friendly
def finetune(
    config: Annotated[Path, typer.Argument(help="YAML config of the new task (its data).")],
    source: Annotated[
        str, typer.Option("--from", help="A dltrain checkpoint, or imagenet (torchvision).")
    ],
    set_: SetOption = None,
    device: DeviceOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
    nproc: NprocOption = 1,
) -> None:
    """Train on a new dataset starting from a checkpoint's (or ImageNet) weights."""
    from dltrain.config import load_config

    overrides = _overrides(set_, device)
    cfg = load_config(config, overrides)
    if nproc > 1:
        command = ["finetune", str(config), "--from", source]
        _launch(nproc, command, set_, device, run_dir, force, quiet, as_json)
        return
    from dltrain.finetune import from_source

    cfg, parent = from_source(cfg, source)
    mode = _mode(quiet, as_json)
    _fit(cfg, _run_folder(cfg, run_dir, force), mode, parent=parent)


@app.command()
@_friendly
def compare(
    configs: Annotated[list[Path], typer.Argument(help="Two or more YAML configs.")],
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per config.")] = 3,
    set_: SetOption = None,
    device: DeviceOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the runs (default runs/compare-…).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train configs side by side with several seeds; mean ± std of best val accuracy."""
    from dltrain.compare import compare as run_compare
    from dltrain.compare import default_root, labels_for
    from dltrain.config import load_config
    from dltrain.runs import new_run_dir

    overrides = _overrides(set_, device)
    loaded = {
        label: load_config(path, overrides)
        for label, path in zip(labels_for(configs), configs, strict=True)
    }
    root = new_run_dir(next(iter(loaded.values())), out or default_root())

    def on_run(label: str, seed: int, summary: dict) -> None:
        _err().print(
            f"{label} seed {seed}: best val acc {summary['best_metrics']['val_acc']:.4f} "
            f"({summary['epochs_run']} epochs, {summary['seconds']:.1f}s)",
            markup=False,
            soft_wrap=True,
        )

    result = run_compare(loaded, seeds, root, on_run)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"compare: {seeds} seed(s) each, one validation split")
    for name in ("config", "model", "params", "best val acc", "s/epoch"):
        table.add_column(name, justify="left" if name in ("config", "model") else "right")
    for row in result["configs"]:
        table.add_row(
            row["config"],
            row["model"],
            f"{row['params']:,}",
            f"{row['val_acc_mean']:.4f} ± {row['val_acc_std']:.4f}",
            f"{row['seconds_per_epoch']:.2f}",
        )
    out_console = _out()
    out_console.print(table)
    out_console.print(
        f"wrote {result['png']} and {root / 'compare.json'}", markup=False, soft_wrap=True
    )


# --- sweep -------------------------------------------------------------------------------


@app.command()
@_friendly
def sweep(
    config: Annotated[Path | None, typer.Argument(help="YAML config with a sweep section.")] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="Trials in all (default sweep.trials).")
    ] = None,
    sampler: Annotated[
        str | None, typer.Option("--sampler", help="random (default) or tpe.")
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Stop unpromising trials early (median pruner).")
    ] = False,
    jobs: Annotated[
        int | None, typer.Option("--jobs", min=1, help="Trials run in parallel (default 1).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Start no trial after this many seconds.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option("--storage", help="Shared study, e.g. postgresql://…; default study.db."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Search space: KEY=SPEC, e.g. 'optim.lr=uniform(0, 1)'."),
    ] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep folder (default runs/<name>/sweep-…).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue an interrupted sweep: its folder.")
    ] = None,
    test_best: Annotated[
        bool, typer.Option("--test-best", help="At the end, test the best trial (once).")
    ] = False,
) -> None:
    """Many trials with sampled hyperparameters, selected on validation; test the best once."""
    from dltrain import sweep as sweeps

    if resume is not None:
        fixed = {"CONFIG": config, "--param": param, "--set": set_, "--device": device}
        fixed.update({"--sampler": sampler, "--prune": prune, "--storage": storage, "--out": out})
        folder, settings = resume, _sweep_resumed(resume, fixed, jobs, timeout)
    else:
        if config is None:
            raise DltrainError("give a config to sweep, or --resume SWEEP_DIR to continue one")
        if sampler not in (None, "random", "tpe"):
            raise DltrainError(f"--sampler {sampler!r}: expected random or tpe")
        from dltrain.config import load_config

        cfg = load_config(config, _overrides(set_, device), list(param or []))
        folder = out or sweeps.default_folder(cfg)
        options = {"trials": trials or cfg.sweep.trials, "sampler": sampler or cfg.sweep.sampler}
        options.update(prune=prune, jobs=jobs or 1, timeout=timeout, storage=storage)
        settings = sweeps.create(cfg, folder, options)
    _sweep_start(folder, settings, trials)
    log_scaled = [key for key, space in sweeps.spaces(settings).items() if space.log]
    on_trial = functools.partial(_sweep_trial_line, settings["metric"], log_scaled)
    result = sweeps.run(folder, on_trial, trials)
    _sweep_table(result)
    if result["best"] is None:
        raise DltrainError("no trial completed (the table says why); nothing to select")
    if test_best:
        _sweep_test(folder, device)


def _sweep_resumed(folder: Path, fixed: dict, jobs: int | None, timeout: float | None) -> dict:
    """The saved settings of a sweep to continue; only how it runs may change."""
    from dltrain import sweep as sweeps

    if any(fixed.values()):
        raise DltrainError(
            "--resume continues a sweep with its saved config and options; drop "
            f"{', '.join(name for name, value in fixed.items() if value)} (--trials, --jobs, "
            "--timeout and --test-best may be given)"
        )
    settings = sweeps.load_settings(folder)
    settings.update(jobs=jobs or settings["jobs"], timeout=timeout or settings["timeout"])
    sweeps.save_settings(folder, settings)
    return settings


def _sweep_start(folder: Path, settings: dict, trials: int | None) -> None:
    keys = ", ".join(settings["config"]["sweep"]["params"])
    total = trials or settings["trials"]
    jobs = settings["jobs"]
    _err().print(
        f"sweep {folder}: {total} trials of {keys} ({settings['sampler']} sampling"
        f"{', pruned' if settings['prune'] else ''}, {jobs} job{'s' if jobs > 1 else ''}), "
        f"selected on {settings['metric']}",
        markup=False,
        soft_wrap=True,
    )


def _sweep_value(value, log: bool = False) -> str:
    """Compact: 3.2e-03 (log-scaled, tiny or huge), 0.213, 64, adam."""
    if isinstance(value, float):
        tiny_or_huge = value and not 0.01 <= abs(value) < 1e4
        return f"{value:.1e}" if log or tiny_or_huge else f"{value:.3g}"
    return "-" if value is None else str(value)


def _sweep_trial_line(metric: str, log_scaled: list[str], row: dict) -> None:
    params = ", ".join(
        f"{key}={_sweep_value(value, key in log_scaled)}" for key, value in row["params"].items()
    )
    value = "-" if row["value"] is None else f"{row['value']:.4f}"
    why = f"; {row['reason']}" if row["reason"] and row["state"] != "complete" else ""
    state = "failed" if row["state"] == "fail" else row["state"]
    _err().print(
        f"trial {row['trial']} {state}: {metric} {value} ({params}), {row['epochs']} epochs, "
        f"{row['seconds']:.1f}s{why}",
        markup=False,
        soft_wrap=True,
    )


SWEEP_STATE_STYLES = {"complete": "green", "pruned": "yellow", "fail": "red", "interrupted": "red"}


def _sweep_table(result: dict) -> None:
    from rich import box
    from rich.text import Text

    rows, metric = result["rows"], result["metric"]
    keys = list(rows[0]["params"]) if rows else []
    # A key's last part heads its column (lr, dropout) unless two keys share it.
    ends = [key.rpartition(".")[2] for key in keys]
    table = Table(box=box.SIMPLE_HEAD, title=f"sweep: {len(rows)} trials, best first")
    table.add_column("trial", justify="right", no_wrap=True)
    for key, end in zip(keys, ends, strict=True):
        table.add_column(end if ends.count(end) == 1 else key, justify="right", no_wrap=True)
    table.add_column(f"best {metric}", justify="right", no_wrap=True)
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column("state", overflow="fold", min_width=8)
    for row in rows:
        state = "failed" if row["state"] == "fail" else row["state"]
        if row["reason"] and row["state"] != "complete":  # the first clause; sweep.csv has all
            short = row["reason"].split(";")[0]
            state += f": {short[:50]}" + ("…" if len(short) > 50 else "")
        table.add_row(
            str(row["trial"]),
            *(_sweep_value(row["params"][key], key in result["log_scaled"]) for key in keys),
            "-" if row["value"] is None else f"{row['value']:.4f}",
            "-" if row["epochs"] is None else str(row["epochs"]),
            Text(state, style=SWEEP_STATE_STYLES.get(row["state"], "")),
        )
    out = _out()
    out.print(table)
    best, names = result["best"], ", ".join(Path(p).name for p in result["written"])
    if best is not None:
        out.print(
            f"best: trial {best['trial']} ({metric} {best['value']:.4f}, {best['folder']}); "
            f"wrote {names} in {result['folder']}",
            markup=False,
            soft_wrap=True,
        )
    if result["finished"] < result["trials"]:
        _note(
            f"{result['finished']} of {result['trials']} trials finished; run the rest with: "
            f"dltrain sweep --resume {result['folder']}"
        )


def _sweep_test(folder: Path, device: str | None) -> None:
    from dltrain.sweep import evaluate_best

    metrics = evaluate_best(folder, device)
    uses, ledger = metrics["test_uses"], Path(metrics["checkpoint"]).parent / "test_ledger.jsonl"
    _out().print(
        f"test (trial {metrics['trial']}): accuracy {metrics['acc']:.4f}  loss "
        f"{metrics['loss']:.4f}  ({metrics['samples']} samples, {metrics['checkpoint']}, "
        f"epoch {metrics['epoch']})",
        markup=False,
        soft_wrap=True,
    )
    style = "yellow" if uses > 1 else ""
    _err().print(
        f"the test set has now been used {uses} time{'s' if uses > 1 else ''} ({ledger}); "
        "report this number, and do not select on it",
        style=style,
        markup=False,
        soft_wrap=True,
    )


# --- eval --------------------------------------------------------------------------------


@app.command("eval")
@_friendly
def eval_(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint file (best.pt or last.pt).")],
    split: Annotated[str, typer.Option("--split", help="val or test.")] = "val",
    set_: SetOption = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Measure a checkpoint on the validation or test split."""
    if split not in ("val", "test"):
        raise DltrainError(f"--split {split!r}: expected val or test")
    from dltrain.evaluation import evaluate_checkpoint

    metrics = evaluate_checkpoint(ckpt, split, device, list(set_ or []))
    uses = metrics.get("test_uses", 0)
    if uses >= 2:
        _err().print(
            f"warning: this run's test set has now been used {uses} times; "
            "select models on validation and test once",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )
    if as_json:
        _out().print_json(json.dumps(metrics))
        return
    out = _out()
    out.print(
        f"{split}: accuracy {metrics['acc']:.4f}  loss {metrics['loss']:.4f}  "
        f"({metrics['samples']} samples, {ckpt}, epoch {metrics['epoch']})",
        markup=False,
        soft_wrap=True,
    )
    _show_eval_details(out, metrics, ckpt, split)


CONFUSION_MAX_CLASSES = 20  # more columns than this do not fit a terminal: see the CSV


def _show_eval_details(out: Console, metrics: dict, ckpt: Path, split: str) -> None:
    """Top-5, the per-class table, the confusion matrix (small ones) and where files went."""
    from rich import box

    from dltrain.evaluation import confusion_path, metrics_path

    if "top5" in metrics:
        out.print(f"top-5 accuracy {metrics['top5']:.4f}")
    table = Table(title="per-class accuracy", box=box.SIMPLE_HEAD)
    for name in ("class", "correct", "total", "accuracy"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in metrics["per_class"]:
        acc = "-" if row["acc"] is None else f"{row['acc']:.4f}"
        table.add_row(escape(row["class"]), str(row["correct"]), str(row["total"]), acc)
    out.print(table)
    names, confusion = metrics["class_names"], metrics["confusion"]
    csv_path = confusion_path(ckpt, split)
    table = _confusion_table(names, confusion) if len(names) <= CONFUSION_MAX_CLASSES else None
    if table is not None and _natural_width(out, table) <= out.width:
        # A title would wrap over a narrow table: a line of its own instead.
        out.print("confusion matrix (rows: true class, columns: predicted class)")
        out.print(table)
    else:
        out.print(f"confusion matrix ({len(names)} classes): see {csv_path}", markup=False)
    out.print(f"wrote {metrics_path(ckpt, split)} and {csv_path}", markup=False, soft_wrap=True)


def _confusion_table(names: list[str], confusion: list[list[int]]) -> Table:
    """Counts with columns headed by class index (names are too wide); zeros as dots."""
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, padding=0)
    table.add_column("true", no_wrap=True)
    for index in range(len(names)):
        table.add_column(str(index), justify="right", no_wrap=True)
    for index, (name, counts) in enumerate(zip(names, confusion, strict=True)):
        label = name if name == str(index) else f"{index} {name}"
        cells = [
            f"[bold]{n}[/]" if i == index else (str(n) if n else "[dim].[/]")
            for i, n in enumerate(counts)
        ]
        table.add_row(escape(label), *cells)
    return table


def _natural_width(console: Console, table: Table) -> int:
    from rich.measure import Measurement

    # Measured with room to spare: a measure within the console's width is clamped to it.
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


# --- predict -----------------------------------------------------------------------------


@app.command("predict")
@_friendly
def predict_(
    inputs: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint file (best.pt or last.pt).")],
    topk: Annotated[int, typer.Option("--topk", help="Classes to show per image.")] = 3,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Classify images with a checkpoint, using its own preprocessing."""
    from dltrain.predict import predict

    results = predict(ckpt, list(inputs), topk, device)
    if as_json:
        print(json.dumps(results, indent=2))
        return
    out = _out()
    for result in results:
        top = ", ".join(f"{item['class']} ({item['prob']:.2f})" for item in result["top"])
        out.print(f"{result['file']}: {top}", markup=False, soft_wrap=True)


# --- config ------------------------------------------------------------------------------


@config_app.command("show")
@_friendly
def config_show(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    set_: SetOption = None,
) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as YAML."""
    from dltrain.config import load_config

    _out().print(load_config(config, list(set_ or [])).to_yaml(), markup=False, end="")


@config_app.command("reference")
def config_reference() -> None:
    """Print every config key with its default and description (Markdown)."""
    from dltrain.config import reference_markdown

    print(reference_markdown(), end="")


@config_app.command("schema")
def config_schema() -> None:
    """Print the config's JSON schema (for editor autocompletion and validation)."""
    from dltrain.config import Config

    print(json.dumps(Config.model_json_schema(), indent=2))


# --- runs and plots ----------------------------------------------------------------------


@app.command("plot")
@_friendly
def plot_(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders (runs/<name>/<time>).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Image to write (.png, .svg or .pdf)."),
    ] = None,
) -> None:
    """Draw learning curves: one run's curves.png, or several runs overlaid in one image."""
    from dltrain.plots import overlay_path, plot_run, plot_runs

    run_dirs = list(dict.fromkeys(run_dirs))
    if len(run_dirs) == 1:
        path = plot_run(run_dirs[0], out)
    else:
        path = plot_runs(run_dirs, out or overlay_path(run_dirs))
    _out().print(f"wrote {path}", markup=False, soft_wrap=True)


RUN_STATUS_STYLES = {
    "finished": "green",
    "stopped_early": "green",
    "stopped": "yellow",
    "interrupted": "yellow",
    "incomplete": "yellow",
    "failed": "red",
    "unreadable": "red",
}


@app.command("runs")
@_friendly
def runs_(
    root: Annotated[Path, typer.Argument(help="Folder to search for runs.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """List runs, newest first: model, data, epochs, accuracy, test uses, time, status."""
    from dltrain.runs import list_runs

    runs = list_runs(root)
    if as_json:
        print(json.dumps(runs, indent=2))
        return
    out = _out()
    if not runs:
        out.print(f"no runs under {root}", markup=False, soft_wrap=True)
        return
    # A narrow terminal drops the least needed columns rather than squeezing every one; the
    # run's folder may wrap onto a second line down to RUN_FOLD characters.
    longest = max(len(_run_label(run, root)) for run in runs)
    for left_out in ((), ("params",), ("params", "time"), ("params", "time", "model/data")):
        table = _runs_table(runs, root, left_out)
        if _natural_width(out, table) - max(longest - RUN_FOLD, 0) <= out.width:
            break
    out.print(table)
    for run in runs:
        if run["problem"]:
            _note(f"{run['path']}: {run['problem']}")


RUN_FOLD = 24
RUN_COLUMNS = ("run", "model/data", "epochs", "val acc", "test acc", "params", "time", "status")


def _runs_table(runs: list[dict], root: Path, left_out: tuple[str, ...] = ()) -> Table:
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, show_edge=False)
    columns = [name for name in RUN_COLUMNS if name not in left_out]
    for name in columns:
        if name in ("run", "model/data"):
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, justify="left" if name == "status" else "right", no_wrap=True)
    for run in runs:
        cells = _run_cells(run, root)
        table.add_row(*(cells[name] for name in columns))
    return table


def _run_cells(run: dict, root: Path) -> dict:
    from rich.text import Text

    uses, status = run["test_uses"], run["status"]
    test = _maybe(run["test_acc"], "{:.4f}") + (f" ×{uses}" if uses > 1 else "")
    return {
        "run": Text(_run_label(run, root)),
        "model/data": Text(f"{run['model'] or '-'}/{run['dataset'] or '-'}"),
        "epochs": f"{run['epochs']}" + (f"/{run['max_epochs']}" if run["max_epochs"] else ""),
        "val acc": _maybe(run["best_val_acc"], "{:.4f}"),
        "test acc": Text(test, style="yellow" if uses > 1 else ""),
        "params": _maybe(run["params"], _count),
        "time": _maybe(run["seconds"], _duration),
        "status": Text(status.replace("_", " "), style=RUN_STATUS_STYLES.get(status, "")),
    }


def _run_label(run: dict, root: Path) -> str:
    """The folder under ROOT; the run's name first when the folder does not show it."""
    folder = Path(run["path"])
    if folder != root and folder.is_relative_to(root):
        folder = folder.relative_to(root)
    name = run["name"]
    return str(folder) if not name or name in folder.parts else f"{name} {folder}"


def _count(n: int) -> str:
    """Parameters: 4,810 / 11.2M."""
    return f"{n:,}" if n < 1_000_000 else f"{n / 1e6:.1f}M"


def _maybe(value, form) -> str:
    if value is None:
        return "-"
    return form(value) if callable(form) else form.format(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def main() -> None:
    app()
