"""The commands that look at what training made: eval, predict, runs, plot, and config views."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dltrain.cli.app import (
    ConfigArgument,
    DeviceOption,
    JsonOption,
    QuietOption,
    SetOption,
    app,
    config_app,
    err,
    friendly,
    note,
    out,
    out_option,
    overrides,
    print_json,
    say,
)

Split = Literal["val", "test"]
Tta = Literal["none", "flip", "flip+shift"]  # the config's eval.tta (tests/test_grammar.py)


@app.command("eval")
@friendly
def eval_(
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint file (best.pt or last.pt).")],
    split: Annotated[Split, typer.Option("--split", help="The split to measure.")] = "val",
    set_: SetOption = None,
    device: DeviceOption = None,
    tta: Annotated[
        Tta | None,
        typer.Option("--tta", help="Test-time augmentation (default: the config's eval.tta)."),
    ] = None,
    out_dir: out_option(
        "Folder for eval-<split>.json, confusion-<split>.csv and the pictures (default: beside "
        "the checkpoint)."
    ) = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Measure a checkpoint on the validation or test split."""
    from dltrain.tools.evaluation import evaluate_checkpoint, output_folder

    problems = []  # pictures that could not be drawn: after the metrics, one line each
    changes = overrides(set_, device)
    metrics = evaluate_checkpoint(ckpt, split, changes, tta, problems.append, out_dir)
    for problem in problems:
        say(f"warning: {problem}", err(), "yellow")
    if "tta" in metrics and metrics["dataset"] in FLIP_CHANGES_MEANING:
        say(
            f"warning: {metrics['dataset']} holds handwritten characters, which a mirror turns "
            "into other shapes: flip test-time augmentation may hurt here",
            err(),
            "yellow",
        )
    uses = metrics.get("test_uses", 0)
    if uses >= 2:
        message = f"this run's test set has now been used {uses} times; select models on "
        say(f"warning: {message}validation and test once", err(), "yellow")
    if as_json:
        print_json(metrics)
        return
    say(
        f"{split}: accuracy {metrics['acc']:.4f}  loss {metrics['loss']:.4f}  "
        f"({metrics['samples']} samples, {ckpt}, {metrics['at']})"
    )
    if quiet:
        return
    say(f"macro-F1 {metrics['macro_f1']:.4f}  balanced accuracy {metrics['balanced_acc']:.4f}")
    if "tta" in metrics:
        t = metrics["tta"]
        say(
            f"with tta {t['mode']}: accuracy {t['acc']:.4f}  loss {t['loss']:.4f}  macro-F1 "
            f"{t['macro_f1']:.4f}  balanced accuracy {t['balanced_acc']:.4f}"
        )
    folder = output_folder(metrics["checkpoint"], out_dir)
    _show_eval_details(out(), metrics, folder, split)


FLIP_CHANGES_MEANING = ("digits", "mnist")  # a mirrored 2, 3, 7 or 9 is not that digit
CONFUSION_MAX_CLASSES = 20  # more columns than this do not fit a terminal: see the CSV


def _show_eval_details(console: Console, metrics: dict, folder: Path, split: str) -> None:
    """Top-5, the per-class table, the confusion matrix (small ones) and where files went."""
    from rich import box

    from dltrain.tools.evaluation import MISTAKES_SHOWN, confusion_path, metrics_path, picture_paths

    if "top5" in metrics:
        console.print(f"top-5 accuracy {metrics['top5']:.4f}")
    table = Table(title="per-class accuracy (recall), precision and F1", box=box.SIMPLE_HEAD)
    for name in ("class", "correct", "total", "recall", "precision", "f1"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in metrics["per_class"]:
        rates = ["-" if row[k] is None else f"{row[k]:.4f}" for k in ("recall", "precision", "f1")]
        table.add_row(escape(row["class"]), str(row["correct"]), str(row["total"]), *rates)
    console.print(table)
    names, confusion = metrics["class_names"], metrics["confusion"]
    csv_path = confusion_path(folder, split)
    table = _confusion_table(names, confusion) if len(names) <= CONFUSION_MAX_CLASSES else None
    if table is not None and _natural_width(console, table) <= console.width:
        # A title would wrap over a narrow table: a line of its own instead.
        console.print("confusion matrix (rows: true class, columns: predicted class)")
        console.print(table)
    else:
        say(f"confusion matrix ({len(names)} classes): see {csv_path}", console)
    say(f"wrote {metrics_path(folder, split)} and {csv_path}", console)
    # The pictures drawn (one that failed was removed and warned about), from the pass
    # without TTA, as the confusion matrix.
    confusion_png, mistakes_png = picture_paths(folder, split)
    plain = " (without tta)" if "tta" in metrics else ""
    if confusion_png.exists():
        say(f"wrote {confusion_png}: the confusion matrix per true class{plain}", console)
    if mistakes_png.exists():
        wrong = metrics["samples"] - sum(row[i] for i, row in enumerate(confusion))
        shown = f"the {min(wrong, MISTAKES_SHOWN)} most confident of {wrong}" if wrong else "no"
        say(f"wrote {mistakes_png}: {shown} mistakes{plain}", console)


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


@app.command("predict")
@friendly
def predict_(
    inputs: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    ckpt: Annotated[Path, typer.Option("--ckpt", help="Checkpoint file (best.pt or last.pt).")],
    topk: Annotated[int, typer.Option("--topk", help="Classes to show per image.")] = 3,
    set_: SetOption = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Classify images with a checkpoint, using its own preprocessing."""
    from dltrain.tools.predict import predict

    results = predict(ckpt, list(inputs), topk, overrides(set_, device))
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for result in results:
        shown = result["top"][:1] if quiet else result["top"]  # quiet: the top class
        top = ", ".join(f"{item['class']} ({item['prob']:.2f})" for item in shown)
        say(f"{result['file']}: {top}")


@config_app.command("show")
@friendly
def config_show(
    config: ConfigArgument,
    set_: SetOption = None,
    device: DeviceOption = None,
) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as YAML."""
    from dltrain.config import load_config

    out().print(load_config(config, overrides(set_, device)).to_yaml(), markup=False, end="")


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


@app.command("plot")
@friendly
def plot_(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders (runs/<name>/<time>).")],
    image: out_option("Image to write (.png, .svg or .pdf).") = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Draw learning curves: one run's curves.png, or several runs overlaid in one image."""
    from dltrain.reporting.plots import overlay_path, plot_run, plot_runs

    run_dirs = list(dict.fromkeys(run_dirs))
    if len(run_dirs) == 1:
        path = plot_run(run_dirs[0], image)
    else:
        path = plot_runs(run_dirs, image or overlay_path(run_dirs))
    if as_json:
        print_json({"path": str(path), "runs": [str(folder) for folder in run_dirs]})
    else:  # one line: quiet or not, it is the result
        say(f"wrote {path}")


RUN_STATUS_STYLES = {
    "finished": "green",
    "stopped_early": "green",
    "stopped": "yellow",
    "interrupted": "yellow",
    "running": "cyan",
    "killed": "yellow",
    "failed": "red",
    "unreadable": "red",
}


@app.command("runs")
@friendly
def runs_(
    root: Annotated[Path, typer.Argument(help="Folder to search for runs.")] = Path("runs"),
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """List runs, newest first: model, data, epochs, accuracy, test uses, time, status."""
    from dltrain.reporting.listing import list_runs

    runs = list_runs(root)
    if as_json:
        print(json.dumps(runs, indent=2))
        return
    if quiet:  # the folders alone, one a line, newest first
        for run in runs:
            say(run["path"])
        return
    if not runs:
        say(f"no runs under {root}")
        return
    console = out()
    if not console.is_terminal:  # piped or redirected: every column, each row on one line
        table = _runs_table(runs, root)
        console.width = max(console.width, _natural_width(console, table))
    else:  # a narrow terminal drops the least needed columns rather than wrap a run's folder
        statuses = [_run_cells(run, root)["status"].plain for run in runs]
        # What the status column can give by wrapping between its words.
        give = max(map(len, statuses)) - max(
            len(word) for text in statuses for word in text.split()
        )
        for left_out in RUNS_LEFT_OUT:
            table = _runs_table(runs, root, left_out)
            if _natural_width(console, table) - max(give, 0) <= console.width:
                break
        else:  # a folder longer than the terminal is wide: it folds
            table = _runs_table(runs, root, RUNS_LEFT_OUT[-1], fold=True)
    console.print(table)
    for run in runs:
        if run["problem"]:
            note(f"{run['path']}: {run['problem']}")


RUN_COLUMNS = ("run", "model/data", "epochs", "val acc", "test acc", "params", "time", "status")
# What a narrower terminal leaves out, in turn.
RUNS_LEFT_OUT = [
    (),
    ("params",),
    ("params", "time"),
    ("params", "time", "model/data"),
    ("params", "time", "model/data", "test acc"),
]


def _runs_table(
    runs: list[dict], root: Path, left_out: tuple[str, ...] = (), fold: bool = False
) -> Table:
    """One row per run; only the status wraps (between its words: "killed, / resumable"), and
    the run's folder too with `fold`."""
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, show_edge=False)
    columns = [name for name in RUN_COLUMNS if name not in left_out]
    for name in columns:
        if name == "status":
            table.add_column(name)
        elif name in ("run", "model/data"):
            table.add_column(name, no_wrap=not (fold and name == "run"), overflow="fold")
        else:
            table.add_column(name, justify="right", no_wrap=True)
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
        "status": Text(
            status.replace("_", " ") + (", resumable" if run["resumable"] else ""),
            style=RUN_STATUS_STYLES.get(status, ""),
        ),
    }


def _run_label(run: dict, root: Path) -> str:
    """The run's folder under ROOT (runs/<name>/<time> shows as <name>/<time>): the path to
    give `dltrain plot` or `--resume` after ROOT/, wherever the run was written."""
    folder = Path(run["path"])
    if folder != root and folder.is_relative_to(root):
        folder = folder.relative_to(root)
    return str(folder)


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
