"""Learning curves as image files: one run (`curves.png`), several runs overlaid, and groups of
runs (one config, several seeds) compared by their mean and spread (pictures of the data are
pictures.py's).

matplotlib is imported inside the functions, so the CLI starts without it, and used through
its object API (`Figure`, no pyplot): nothing is shown, no global backend is switched, any
machine can draw (headless too), and a figure is freed like any other object.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path

from dltrain.errors import DltrainError
from dltrain.files import atomic_write
from dltrain.reporting.listing import describe_run
from dltrain.reporting.runs import read_metrics

FIGSIZE, DPI = (12, 5), 100  # every image is 1200×500 pixels
_THIN = {"linestyle": "--", "linewidth": 0.8, "marker": ""}  # a second curve in the same colour


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw one run's learning curves to `out` (default `<run_dir>/curves.png`): loss (left,
    with the learning rate on a second axis) and accuracy (right), train against val per
    epoch; vertical lines at the best epoch and where early stopping stopped; one legend
    below both panels, where it covers no curve. Works on a run still going (no summary.json
    yet): it draws the epochs metrics.csv holds."""
    run_dir = Path(run_dir)
    run = _load_run(run_dir)
    rows, best = run["rows"], run["best_epoch"]
    stopped = run["epochs"] if run["status"] == "stopped_early" else None
    title = f"{run['name']} ({run['status'].replace('_', ' ')}) — {run_dir}"
    fig, (loss_ax, acc_ax) = _figure(title, "loss", "accuracy")
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        train, running = _train_key(rows, metric), f"train_{metric}"
        label = "train" if train == running else "train (eval mode)"
        _line(ax, rows, train, color="C0", label=label)
        if train != running:
            _line(ax, rows, running, color="C0", label="train (running, train mode)", **_THIN)
        _line(ax, rows, f"val_{metric}", color="C1", label="val")
        if best is not None:
            ax.axvline(best, color="green", ls=":", lw=1.5, label=f"best epoch {best}")
        if stopped is not None:
            ax.axvline(stopped, color="red", ls="--", lw=1, label=f"early stop at {stopped}")
    # Both panels label their lines alike: the loss panel's labels, and the learning rate.
    _below(fig, [*loss_ax.get_legend_handles_labels()[0], *_lr_axis(loss_ax, rows)])
    return save_figure(fig, out if out is not None else run_dir / "curves.png")


def draw_curves(run_dir: str | Path) -> str | None:
    """curves.png after a run, for whatever epochs metrics.csv holds; a plotting problem never
    fails a run: it comes back as a note to show (None when all is well)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.csv").exists():
        try:
            plot_run(run_dir)
        except Exception as err:  # noqa: BLE001 - the run itself is saved; say so and go on
            return f"could not draw {run_dir / 'curves.png'}: {err}"
    return None


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Overlay several runs: val loss and val accuracy per epoch as solid lines, train as
    dashed lines in the same colour, one colour per run; the training curves are those
    measured in eval mode where metrics.csv has them (as in curves.png), and the title and
    legend say which."""
    from matplotlib.lines import Line2D

    runs = [_load_run(Path(folder)) for folder in run_dirs]
    measured = {_train_key(run["rows"], "acc") == "train_eval_acc" for run in runs}
    train_is = TRAIN_CURVES[True in measured, False in measured]
    title = f"{len(runs)} runs: validation (solid) and training, {train_is} (dashed)"
    fig, (loss_ax, acc_ax) = _figure(title, "loss", "accuracy")
    for run, label, color in zip(runs, _labels(runs), _colors(len(runs)), strict=True):
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
            _line(ax, run["rows"], f"val_{metric}", color=color, label=label)
            _line(ax, run["rows"], _train_key(run["rows"], metric), color=color, **_THIN)
    val = Line2D([], [], color="black", label="val")
    train = Line2D([], [], color="black", linestyle="--", label=f"train, {train_is}")
    _below(fig, [*acc_ax.get_legend_handles_labels()[0], val, train])
    return save_figure(fig, out)


# The overlay's dashed curves, by (some runs measured train in eval mode, some did not).
TRAIN_CURVES = {
    (True, False): "eval mode",
    (False, True): "running, train mode",
    (True, True): "eval mode where measured, else running",
}


def plot_compare(groups: dict[str, list[str | Path]], out: str | Path) -> Path:
    """Compare configs across seeds: for each label, the mean val loss and val accuracy per
    epoch over its runs, with a band from their minimum to their maximum. Where some runs
    stopped early, later epochs average the runs that got there."""
    title = "mean over seeds (line) and min–max (band)"
    fig, (loss_ax, acc_ax) = _figure(title, "val loss", "val accuracy")
    for (label, folders), color in zip(groups.items(), _colors(len(groups)), strict=True):
        if not folders:
            raise DltrainError(f"compare: {label!r} has no runs")
        runs = [_load_run(Path(folder)) for folder in folders]
        for ax, key in ((loss_ax, "val_loss"), (acc_ax, "val_acc")):
            epochs, mean, low, high = _spread(runs, key)
            ax.plot(epochs, mean, color=color, label=f"{label} (n={len(runs)})", **_dots(epochs))
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
    acc_ax.legend(fontsize="small")
    return save_figure(fig, out)


def plot_sweep(rows: list[dict], spaces: dict, metric: str, out: str | Path) -> Path:
    """A sweep's best validation metric against each parameter, one panel per parameter:
    completed trials as dots, pruned ones as crosses (their best before being stopped), the
    best trial as a star. Log-scaled parameters get a log x-axis; choices one tick each."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, max(1, len(spaces)), squeeze=False)[0]
    scored = [row for row in rows if row["value"] is not None]
    best = next((row for row in rows if row["state"] == "complete"), None)
    for ax, (key, space) in zip(axes, spaces.items(), strict=False):
        labels = [str(choice) for choice in space.choices]

        def x(row, key=key, labels=labels):
            value = row["params"][key]
            return labels.index(str(value)) if str(value) in labels else value

        for state, marker in (("complete", "o"), ("pruned", "x")):
            points = [(x(row), row["value"]) for row in scored if row["state"] == state]
            if points:
                ax.scatter(*zip(*points, strict=True), label=state, color="C0", marker=marker)
        if best is not None:
            ax.scatter([x(best)], [best["value"]], marker="*", s=200, color="C3", label="best")
        if labels:
            ax.set(xticks=range(len(labels)), xticklabels=labels, xlim=(-0.5, len(labels) - 0.5))
        elif space.log:  # the whole searched range, so that its empty parts show too
            ax.set(xscale="log", xlim=(space.low / 1.3, space.high * 1.3))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            margin = (space.high - space.low) * 0.04
            ax.set_xlim(space.low - margin, space.high + margin)
        ax.set(xlabel=key, ylabel=f"best {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{len(rows)} trials: best {metric} (validation) against each parameter")
    return save_figure(fig, out)


def overlay_path(run_dirs: list[str | Path]) -> Path:
    """Where `dltrain plot A B …` writes by default: overlay-<time>.png in the folder that
    holds all the runs."""
    parents = [os.path.abspath(Path(folder).parent) for folder in run_dirs]
    common = Path(os.path.commonpath(parents))
    with suppress(ValueError):
        common = common.relative_to(Path.cwd())
    return common / f"overlay-{time.strftime('%Y%m%d-%H%M%S')}.png"


def _load_run(run_dir: Path) -> dict:
    """`describe_run` of a run folder, with its folder (`dir`) and metrics.csv's `rows`."""
    if not run_dir.is_dir():
        raise DltrainError(f"{run_dir}: no such folder; give a run folder (runs/<name>/<time>)")
    if not (run_dir / "metrics.csv").is_file() and (run_dir / "config.yaml").is_file():
        # A run that ended before its first epoch: as `dltrain runs` lists it.
        status = describe_run(run_dir)["status"].replace("_", " ")
        raise DltrainError(f"{run_dir}: a run that recorded no epoch ({status}); nothing to draw")
    if not (run_dir / "metrics.csv").is_file():
        found = [*run_dir.glob("*/metrics.csv"), *run_dir.glob("*/*/metrics.csv")]
        inside = sorted(p.parent for p in found)
        count = f"{len(inside)} run" + ("s" if len(inside) > 1 else "")
        hint = f"; it holds {count}, e.g. {inside[0]} (list them: dltrain runs)" if inside else ""
        raise DltrainError(f"{run_dir}: no metrics.csv, so not a run folder{hint}")
    try:
        rows = read_metrics(run_dir)
    except OSError as err:
        raise DltrainError(f"{run_dir / 'metrics.csv'}: {err.strerror or err}") from None
    if not rows:
        raise DltrainError(f"{run_dir / 'metrics.csv'}: no epoch recorded yet")
    # Status and best epoch as `dltrain runs` shows them: summary.json when it is current,
    # else what the config's early stopping would pick so far.
    run = describe_run(run_dir)
    return {**run, "name": run["name"] or run_dir.name, "dir": run_dir, "rows": rows}


def _train_key(rows: list[dict], metric: str) -> str:
    """Training accuracy measured in eval mode on a fixed subset when metrics.csv has it (the
    running mean over an epoch mixes changing weights, dropout and augmentation)."""
    honest = f"train_eval_{metric}"
    return honest if any(row.get(honest) is not None for row in rows) else f"train_{metric}"


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def _spread(runs: list[dict], key: str) -> tuple[list[int], list, list, list]:
    """Per epoch: the mean, minimum and maximum over the runs that reached it."""
    by_epoch: dict[int, list[float]] = {}
    for row in [row for run in runs for row in run["rows"] if row.get(key) is not None]:
        by_epoch.setdefault(row["epoch"], []).append(row[key])
    epochs = sorted(by_epoch)
    mean = [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]
    return epochs, mean, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs]


def _figure(title: str, *ylabels: str):
    """A figure of one panel per y-label, epochs on the x-axis."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(1, len(ylabels))
    for ax, ylabel in zip(axes, ylabels, strict=True):
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig, axes


def _dots(epochs: list) -> dict:
    """Markers on short curves, so that a run of one or a few epochs still shows."""
    return {"marker": "o", "markersize": 3} if len(epochs) <= 40 else {}


def _line(ax, rows: list[dict], key: str, **style) -> None:
    epochs, values = _series(rows, key)
    if epochs:
        ax.plot(epochs, values, **{**_dots(epochs), **style})


def _legend(ax, extra: list = ()) -> None:
    """The axis's labelled lines, then `extra` ones (style keys), inside the axis."""
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *extra], fontsize="small")


def _below(fig, handles: list) -> None:
    """One legend for the whole figure, below its panels: outside them, it covers no data
    (inside, the loss legend sat over the learning rate and the best-epoch line)."""
    ncol = min(len(handles), 6)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize="small")


def _lr_axis(ax, rows: list[dict]) -> list:
    """The learning rate on a second y-axis (log scale when it spans more than 10×), ticks
    written out (0.001, not 1 under a "1e-3" that crowds the next panel); returns its legend
    entry. A constant rate draws no line: its entry says the value."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    epochs, rates = _series(rows, "lr")
    positive = [rate for rate in rates if rate > 0]
    if not positive:
        return []
    if len(set(rates)) == 1:
        return [Line2D([], [], linestyle="", label=f"learning rate {rates[0]:g} (constant)")]
    twin = ax.twinx()
    if max(positive) > 10 * min(positive):
        twin.set_yscale("log")
        rates = [rate if rate > 0 else float("nan") for rate in rates]  # log has no zero
    else:  # from zero, so that a small change does not look like a large one
        twin.set_ylim(0, max(positive) * 1.15)
        twin.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    twin.set_ylabel("learning rate", color="grey")
    twin.tick_params(axis="y", colors="grey")
    return twin.plot(epochs, rates, color="grey", linewidth=1, alpha=0.8, label="learning rate")


def _colors(count: int) -> list:
    """The default cycle's colours, or for more than ten lines as many from viridis."""
    from matplotlib import colormaps

    return [f"C{i}" if count <= 10 else colormaps["viridis"](i / (count - 1)) for i in range(count)]


def _labels(runs: list[dict]) -> list[str]:
    """The run's name, with its folder when that is not just the name; paths if ambiguous."""
    labels = [
        run["name"] if run["dir"].name == run["name"] else f"{run['name']} ({run['dir'].name})"
        for run in runs
    ]
    return labels if len(set(labels)) == len(labels) else [str(run["dir"]) for run in runs]


def save_figure(fig, out: str | Path) -> Path:
    """Write the figure atomically; the format follows the file's suffix (png by default)."""
    out = Path(out)
    kind = out.suffix.lower().lstrip(".") or "png"
    if kind not in ("png", "svg", "pdf"):
        raise DltrainError(f"{out}: cannot draw a .{kind} file; use .png, .svg or .pdf")
    if out.parent and not out.parent.is_dir():
        raise DltrainError(f"{out}: the folder {out.parent} does not exist")
    atomic_write(out, lambda handle: fig.savefig(handle, format=kind, dpi=DPI))
    return out


def plot_lr_find(result: dict, out: str | Path) -> Path:
    """lr-find's curves: the smoothed loss against the learning rate (log x), one colour per
    seed with its raw losses faint behind it, the valley (o) and steepest (v) points marked.
    The blow-up at the end runs off the top rather than flattening the rest."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    curves = [curve for curve in result["seeds"] if curve["lrs"]]
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for curve, color in zip(curves, _colors(len(curves)), strict=True):
        lrs, smoothed = curve["lrs"], curve["smoothed"]
        ax.plot(lrs, curve["losses"], color=color, alpha=0.25, linewidth=0.8)
        ax.plot(lrs, smoothed, color=color, label=f"seed {curve['seed']} ({curve['stopped']})")
        for rule, marker in (("valley", "o"), ("steepest", "v")):
            if curve[rule] is not None:
                y = smoothed[lrs.index(curve[rule])]
                ax.plot([curve[rule]], [y], marker=marker, color=color, markersize=9, ls="")
    # From the lowest loss of the points the rules read (raw ones included) to a little above
    # the untrained loss.
    lows = [min(curve[key][slice(*curve["window"])]) for curve in curves for key in _LR_CURVES]
    if lows:
        high = max(curve["smoothed"][0] for curve in curves)
        span = max(high - min(lows), 0.1)
        ax.set_ylim(min(lows) - 0.05 * span, high + 0.3 * span)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed; raw faint)")
    ax.grid(alpha=0.3)
    summary, marks = result["summary"], []
    for rule, marker in (("valley", "o"), ("steepest", "v")):
        value = summary[rule]
        text = f"{rule} {value:.3g}" if value is not None else f"{rule}: none"
        marks.append(Line2D([], [], color="black", marker=marker, ls="", label=text))
    _legend(ax, marks)
    fig.suptitle(
        f"lr-find {result['name']}: {len(result['seeds'])} seed(s), up to {result['steps']} "
        f"steps from {result['start']:g} to {result['end']:g}"
    )
    return save_figure(fig, out)


_LR_CURVES = ("smoothed", "losses")  # a seed's curves in lr_find.json: smoothed and raw
