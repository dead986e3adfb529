"""`dltrain compare` and `dltrain sweep`: many runs, measured on validation, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from dltrain.cli.app import (
    DeviceOption,
    JsonOption,
    OutOption,
    QuietOption,
    SetOption,
    app,
    count,
    err,
    friendly,
    mode,
    note,
    out,
    overrides,
    print_json,
    say,
)
from dltrain.errors import ConfigError, DltrainError


@app.command()
@friendly
def compare(
    configs: Annotated[list[Path], typer.Argument(help="Two or more YAML configs.")],
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per config.")] = 3,
    set_: SetOption = None,
    device: DeviceOption = None,
    out_dir: OutOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train configs side by side with several seeds; mean ± std of best val accuracy.

    The runs go to --out (default runs/compare-<time>)."""
    from dltrain.config import load_config
    from dltrain.reporting.runs import new_run_dir
    from dltrain.tools.compare import compare as run_compare
    from dltrain.tools.compare import default_root, labels_for

    if len(configs) < 2:
        raise ConfigError(
            [f"needs two or more configs to compare, got {len(configs)}; to train one config, "
             "use dltrain train"], "dltrain compare"
        )  # fmt: skip
    loaded = {
        label: load_config(path, overrides(set_, device))
        for label, path in zip(labels_for(configs), configs, strict=True)
    }
    root = new_run_dir(next(iter(loaded.values())), out_dir or default_root())

    def on_run(label: str, seed: int, summary) -> None:  # an events.Summary
        if quiet or as_json:
            return
        acc = summary.best_metrics["val_acc"]
        epochs, seconds = count(summary.epochs_run, "epoch"), summary.seconds
        say(f"{label} seed {seed}: best val acc {acc:.4f} ({epochs}, {seconds:.1f}s)", err())

    result = run_compare(loaded, seeds, root, on_run)
    if as_json:
        print_json(result)
        return
    if quiet:
        for row in result["configs"]:
            acc = f"{row['val_acc_mean']:.4f} ± {row['val_acc_std']:.4f}"
            say(f"{row['config']}: best val acc {acc}")
        return
    table = Table(title=f"compare: {seeds} seed(s) each, one validation split")
    for name in ("config", "model", "params", "best val acc", "s/epoch"):
        table.add_column(name, justify="left" if name in ("config", "model") else "right")
    for row in result["configs"]:
        acc = f"{row['val_acc_mean']:.4f} ± {row['val_acc_std']:.4f}"
        speed = f"{row['seconds_per_epoch']:.2f}"
        table.add_row(row["config"], row["model"], f"{row['params']:,}", acc, speed)
    out().print(table)
    say(f"wrote {result['png']} and {root / 'compare.json'}")


ConfigArgument = Annotated[Path | None, typer.Argument(help="YAML config with a sweep section.")]
TrialsOption = Annotated[
    int | None, typer.Option("--trials", min=1, help="Trials in all (default sweep.trials).")
]
Sampler = Literal["random", "tpe"]  # the config's sweep.sampler (tests/test_grammar.py)
SamplerOption = Annotated[
    Sampler | None,
    typer.Option("--sampler", help="random or tpe, Optuna's TPE (default: sweep.sampler)."),
]
PruneOption = Annotated[
    bool, typer.Option("--prune", help="Stop unpromising trials early (median pruner).")
]
JobsOption = Annotated[
    int | None, typer.Option("--jobs", min=1, help="Trials run in parallel (default 1).")
]
TimeoutOption = Annotated[
    float | None, typer.Option("--timeout", help="Start no trial after this many seconds.")
]
StorageOption = Annotated[
    str | None,
    typer.Option("--storage", help="Shared study, e.g. postgresql://…; default study.db."),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", help="Search space: KEY=SPEC, e.g. 'optim.lr=uniform(0, 1)'."),
]
ResumeOption = Annotated[
    Path | None, typer.Option("--resume", help="Continue an interrupted sweep: its folder.")
]
TestBestOption = Annotated[
    bool, typer.Option("--test-best", help="At the end, test the best trial (once).")
]


def _fixed_on_resume(given: dict) -> None:
    """A resumed sweep keeps its saved config and options: giving them again is refused."""
    if names := [name for name, value in given.items() if value]:
        raise DltrainError(
            "--resume continues a sweep with its saved config and options; drop "
            f"{', '.join(names)} (--trials, --jobs, --timeout and --test-best may be given)"
        )


@app.command()
@friendly
def sweep(
    config: ConfigArgument = None,
    trials: TrialsOption = None,
    sampler: SamplerOption = None,
    prune: PruneOption = False,
    jobs: JobsOption = None,
    timeout: TimeoutOption = None,
    storage: StorageOption = None,
    param: ParamOption = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    out_dir: OutOption = None,
    resume: ResumeOption = None,
    test_best: TestBestOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Many trials with sampled hyperparameters, selected on validation; test the best once.

    The sweep's folder is --out (default runs/<name>/sweep-<time>)."""
    from dltrain.config import load_config
    from dltrain.reporting.runs import RunLock, stamped
    from dltrain.tools import sweep as sweeps

    if resume is not None:
        fixed = {"CONFIG": config, "--param": param, "--set": set_, "--device": device}
        fixed.update({"--sampler": sampler, "--prune": prune, "--storage": storage})
        _fixed_on_resume({**fixed, "--out": out_dir})
        folder = resume
        sweeps.load_settings(folder)  # a folder that is no sweep: refused before it is locked
    else:
        if config is None:
            raise DltrainError("give a config to sweep, or --resume SWEEP_DIR to continue one")
        cfg = load_config(config, overrides(set_, device), list(param or []))
        folder = out_dir or stamped(Path("runs", cfg.name), "sweep-")
        options = {"trials": trials or cfg.sweep.trials, "sampler": sampler or cfg.sweep.sampler}
        options.update(prune=prune, jobs=jobs or 1, timeout=timeout, storage=storage)
        sweeps.prepare(cfg, folder)
    # One process owns a sweep folder (its parallel workers are its children): a second
    # sweep --resume would take over trials the first is running.
    with RunLock(folder):
        if resume is None:
            settings = sweeps.create(cfg, folder, options)
        else:
            settings = sweeps.go_on(folder, trials=trials, jobs=jobs, timeout=timeout)
        shown = mode(quiet, as_json)
        on_trial = _sweep_progress(folder, settings) if shown == "normal" else lambda row: None
        result = sweeps.run(folder, on_trial)
        if shown != "json":
            _sweep_table(result, shown)
        if result["best"] is None:
            why = "the table says why" if shown == "normal" else f"see {folder / 'sweep.csv'}"
            raise DltrainError(f"no trial completed ({why}); nothing to select")
        tested = _sweep_test(folder, device, shown) if test_best else None
        if shown == "json":
            print_json({**result, "test": tested})


def _sweep_value(value, log: bool = False) -> str:
    """Compact: 3.2e-03 (log-scaled, tiny or huge), 0.213, 64, adam."""
    if isinstance(value, float):
        tiny_or_huge = value and not 0.01 <= abs(value) < 1e4
        return f"{value:.1e}" if log or tiny_or_huge else f"{value:.3g}"
    return "-" if value is None else str(value)


def _sweep_progress(folder: Path, settings: dict):
    """Say what the sweep runs; return the callback that says each trial's outcome."""
    from dltrain.tools.trial import spaces

    metric, keys = settings["metric"], ", ".join(settings["config"]["sweep"]["params"])
    how = f"{settings['sampler']} sampling{', pruned' if settings['prune'] else ''}"
    how += f", {settings['jobs']} job{'s' if settings['jobs'] > 1 else ''}"
    say(
        f"sweep {folder}: {count(settings['trials'], 'trial')} of {keys} ({how}), selected on "
        f"{metric}",
        err(),
    )
    log_scaled = [key for key, space in spaces(settings).items() if space.log]

    def on_trial(row: dict) -> None:
        params = ", ".join(
            f"{key}={_sweep_value(value, key in log_scaled)}"
            for key, value in row["params"].items()
        )
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        why = f"; {row['reason']}" if row["reason"] and row["state"] != "complete" else ""
        state = "failed" if row["state"] == "fail" else row["state"]
        say(
            f"trial {row['trial']} {state}: {metric} {value} ({params}), "
            f"{count(row['epochs'], 'epoch')}, "
            f"{row['seconds']:.1f}s{why}",
            err(),
        )

    return on_trial


def _sweep_table(result: dict, shown: str = "normal") -> None:
    """The trials, best first (not when quiet), the best one's line and what is left to run."""
    styles = {"complete": "green", "pruned": "yellow", "fail": "red", "interrupted": "red"}
    rows, metric = result["rows"], result["metric"]
    keys = list(rows[0]["params"]) if rows else []
    # A key's last part heads its column (lr, dropout) unless two keys share it.
    ends = [key.rpartition(".")[2] for key in keys]
    heads = [end if ends.count(end) == 1 else key for key, end in zip(keys, ends, strict=True)]
    table = Table(box=box.SIMPLE_HEAD, title=f"sweep: {len(rows)} trials, best first")
    for head in ["trial", *heads, f"best {metric}", "epochs"]:
        table.add_column(head, justify="right", no_wrap=True)
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
            _sweep_value(row["epochs"]),
            Text(state, style=styles.get(row["state"], "")),
        )
    if shown == "normal":
        out().print(table)
    if (best := result["best"]) is not None:
        names = ", ".join(Path(p).name for p in result["written"])
        say(
            f"best: trial {best['trial']} ({metric} {best['value']:.4f}, {best['folder']}); "
            f"wrote {names} in {result['folder']}"
        )
    if result["finished"] < result["trials"]:
        note(
            f"{result['finished']} of {result['trials']} trials finished; run the rest with: "
            f"dltrain sweep --resume {result['folder']}"
        )


def _sweep_test(folder: Path, device: str | None, shown: str = "normal") -> dict:
    """The best trial on the test split, once; returns its metrics."""
    from dltrain.tools.sweep import evaluate_best

    metrics = evaluate_best(folder, overrides(None, device))
    uses, ledger = metrics["test_uses"], Path(metrics["checkpoint"]).parent / "test_ledger.jsonl"
    if shown != "json":
        say(
            f"test (trial {metrics['trial']}): accuracy {metrics['acc']:.4f}  loss "
            f"{metrics['loss']:.4f}  ({metrics['samples']} samples, {metrics['checkpoint']}, "
            f"{metrics['at']})"
        )
    say(
        f"the test set has now been used {uses} time{'s' if uses > 1 else ''} ({ledger}); "
        "report this number, and do not select on it",
        err(),
        "yellow" if uses > 1 else "",
    )
    return metrics
