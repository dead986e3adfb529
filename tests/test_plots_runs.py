"""Learning curves (`plot_run`, `dltrain plot`) and the run listing (`dltrain runs`), on two
real 2-epoch digits runs: one finished, one stopped early."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dltrain.reporting.listing import describe_run, list_runs
from dltrain.reporting.plots import plot_compare, plot_run, plot_runs

SIZE = (1200, 500)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """root/digits_small/<time> (finished) and root/digits_es/<a day later> (stopped early:
    patience 1 and a min_delta nothing reaches, so it stops after epoch 2)."""
    from dltrain.config import load_config
    from dltrain.training.engine import fit
    from tests.conftest import DIGITS_SMALL

    root = tmp_path_factory.mktemp("runs")
    config = root.parent / f"{root.name}-config.yaml"
    config.write_text(DIGITS_SMALL)
    fit(load_config(config), root / "digits_small" / "20250101-120000")
    stopping = ["train.early_stopping.patience=1", "train.early_stopping.min_delta=0.5"]
    early = load_config(config, ["name=digits_es", "train.epochs=5", *stopping])
    fit(early, root / "digits_es" / "20250102-120000")
    return root


@pytest.fixture
def finished(runs_root) -> Path:
    return runs_root / "digits_small" / "20250101-120000"


@pytest.fixture
def stopped(runs_root) -> Path:
    return runs_root / "digits_es" / "20250102-120000"


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("curves.png", "overlay-*"))
    return to


def check_image(path: Path) -> Image.Image:
    """A PNG of the fixed size that is a drawing, not a blank or nearly blank canvas."""
    image = Image.open(path).convert("RGB")
    assert image.size == SIZE
    assert len(image.getcolors(maxcolors=1 << 20)) > 50
    return image


def red_pixels(image: Image.Image) -> int:
    """Pixels of the early-stopping marker (pure red; no curve of plot_run is drawn in red)."""
    r, g, b = np.asarray(image).transpose(2, 0, 1).astype(int)
    return int(((r > 230) & (g < 100) & (b < 100)).sum())


# --- plot_run --------------------------------------------------------------------------------


def test_plot_run_of_a_finished_run(finished):
    (finished / "curves.png").unlink(missing_ok=True)
    assert plot_run(finished) == finished / "curves.png"
    assert red_pixels(check_image(finished / "curves.png")) == 0  # no early-stopping marker


def test_plot_run_of_an_early_stopped_run_marks_the_stop(stopped):
    run = describe_run(stopped)
    assert (run["status"], run["epochs"], run["best_epoch"]) == ("stopped_early", 2, 1)
    (stopped / "curves.png").unlink(missing_ok=True)
    assert red_pixels(check_image(plot_run(stopped))) > 50


def test_plot_run_of_a_run_still_going(finished, tmp_path):
    """Only metrics.csv (no summary.json, no config.yaml), its last line half written."""
    folder = tmp_path / "going"
    folder.mkdir()
    text = (finished / "metrics.csv").read_text()
    (folder / "metrics.csv").write_text(text + "3,0.12,0.9")
    check_image(plot_run(folder, tmp_path / "going.png"))
    run = describe_run(folder)
    # No process holds the folder's lock: killed; without a config.yaml not resumable.
    assert (run["status"], run["epochs"], run["name"]) == ("killed", 2, None)
    assert run["resumable"] is False


def test_plot_run_uses_train_accuracy_measured_in_eval_mode(finished, tmp_path):
    folder = tmp_path / "honest"
    folder.mkdir()
    lines = (finished / "metrics.csv").read_text().splitlines()
    rows = [lines[0] + ",train_eval_loss,train_eval_acc"]
    rows += [line + f",0.{5 - i},0.9{i}" for i, line in enumerate(lines[1:])]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    check_image(plot_run(folder))


def test_plot_runs_and_compare(finished, stopped, tmp_path):
    check_image(plot_runs([finished, stopped], tmp_path / "overlay.png"))
    groups = {"finished": [finished, finished], "stopped": [stopped]}
    check_image(plot_compare(groups, tmp_path / "compare.png"))


# --- dltrain plot ----------------------------------------------------------------------------


def test_cli_plot_one_run(cli, finished, tmp_path):
    result = cli("plot", finished)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {finished / 'curves.png'}"
    result = cli("plot", finished, "--out", tmp_path / "mine.png")
    assert result.exit_code == 0, result.output
    check_image(tmp_path / "mine.png")


def test_cli_plot_two_runs(cli, finished, stopped, runs_root, tmp_path):
    result = cli("plot", finished, stopped, "--out", tmp_path / "both.png")
    assert result.exit_code == 0, result.output
    check_image(tmp_path / "both.png")
    result = cli("plot", finished, stopped)  # default: beside the runs
    assert result.exit_code == 0, result.output
    written = Path(result.stdout.strip().removeprefix("wrote "))
    assert written.parent.resolve() == runs_root.resolve() and written.name.startswith("overlay-")
    check_image(written)
    written.unlink()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["{tmp}"], "{tmp}: no metrics.csv, so not a run folder"),
        (["{tmp}/nope"], "{tmp}/nope: no such folder"),
        (["{run}", "--out", "{tmp}/curves.gif"], "{tmp}/curves.gif: cannot draw a .gif file"),
    ],
)
def test_cli_plot_errors_are_one_line(cli, finished, tmp_path, args, expected):
    result = cli("plot", *(a.format(tmp=tmp_path, run=finished) for a in args))
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: {expected.format(tmp=tmp_path)}")


# --- dltrain runs ----------------------------------------------------------------------------


def test_cli_runs_table_newest_first(cli, runs_root):
    result = cli("runs", runs_root)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    es = next(i for i, line in enumerate(lines) if "digits_es" in line)
    small = next(i for i, line in enumerate(lines) if "digits_small" in line)
    assert es < small
    assert "stopped early" in lines[es] and "2/5" in lines[es]
    assert "finished" in lines[small] and "2/2" in lines[small]


def test_cli_runs_json(cli, runs_root):
    result = cli("runs", runs_root, "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)
    assert [(r["name"], r["status"]) for r in runs] == [
        ("digits_es", "stopped_early"),
        ("digits_small", "finished"),
    ]
    for run in runs:
        assert (run["model"], run["dataset"], run["epochs"]) == ("mlp", "digits", 2)
        assert run["best_val_acc"] > 0.5 and run["params"] > 1000 and run["seconds"] > 0
        assert (run["test_acc"], run["test_uses"], run["problem"]) == (None, 0, None)
        assert Path(run["path"]).parent.parent == runs_root


def test_two_test_evaluations_show_two_uses(cli, finished, tmp_path):
    run = copy_run(finished, tmp_path / "root" / "digits_small" / "20250103-120000")
    for _ in range(2):
        result = cli("eval", "--ckpt", run / "best.pt", "--split", "test", "--json")
        assert result.exit_code == 0, result.output
    acc = json.loads(result.stdout)["acc"]
    [listed] = list_runs(tmp_path / "root")
    assert (listed["test_uses"], listed["test_acc"]) == (2, acc)
    result = cli("runs", tmp_path / "root")
    assert f"{acc:.4f} ×2" in result.stdout


@pytest.mark.parametrize(
    "name, text",
    [
        ("summary.json", "{not json"),
        ("summary.json", '{"status": "finished", "best_'),  # cut off
        ("summary.json", "[1, 2]"),
        ("summary.json", '{"status": "exploded"}'),
        ("config.yaml", "model: [unclosed"),
    ],
)
def test_damaged_run_is_unreadable_and_the_listing_goes_on(cli, finished, tmp_path, name, text):
    copy_run(finished, tmp_path / "root" / "good")
    bad = copy_run(finished, tmp_path / "root" / "bad")
    (bad / name).write_text(text)
    result = cli("runs", tmp_path / "root")
    assert result.exit_code == 0, result.output
    [bad_line] = [line for line in result.stdout.splitlines() if "bad" in line.split()]
    assert "unreadable" in bad_line
    assert result.stdout.count("finished") == 1
    assert f"{bad}: {name}:" in result.stderr
    runs = json.loads(cli("runs", tmp_path / "root", "--json").stdout)
    assert {run["status"] for run in runs} == {"unreadable", "finished"}


def test_a_resumed_run_with_an_older_summary_and_no_process_was_killed(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    stamp = (run / "summary.json").stat().st_mtime
    os.utime(run / "metrics.csv", (stamp + 5, stamp + 5))
    shown = describe_run(run)
    assert (shown["status"], shown["resumable"]) == ("killed", True)


def test_missing_root_is_one_line_and_an_empty_one_says_so(cli, tmp_path):
    result = cli("runs", tmp_path / "nope")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'} does not exist; give the folder that holds your runs "
        "(default: runs)"
    ]
    result = cli("runs", tmp_path)
    assert result.exit_code == 0 and result.stdout.strip() == f"no runs under {tmp_path}"


# --- legends and axes: nothing covered, nothing crowded ----------------------------------------


def drawn_figure(monkeypatch, draw) -> object:
    """The matplotlib Figure that `draw()` saves (saved as usual, so that it is laid out)."""
    from dltrain.reporting import plots

    figures, save = [], plots.save_figure
    monkeypatch.setattr(
        plots, "save_figure", lambda fig, out: figures.append(fig) or save(fig, out)
    )
    draw()
    [figure] = figures
    return figure


def with_lr(run_dir: Path, to: Path, rates: list[float]) -> Path:
    """A copy of a run whose metrics.csv has the learning rates `rates`, one per epoch."""
    copy_run(run_dir, to)
    lines = (to / "metrics.csv").read_text().splitlines()
    names = lines[0].split(",")
    column = names.index("lr")
    rows = [line.split(",") for line in lines[1:]]
    for row, rate in zip(rows, rates, strict=True):
        row[column] = str(rate)
    (to / "metrics.csv").write_text("\n".join(",".join(row) for row in [names, *rows]) + "\n")
    return to


def texts(legend) -> list[str]:
    return [text.get_text() for text in legend.get_texts()]


@pytest.mark.parametrize("rates", [[1e-3, 1e-3], [1e-3, 4e-4], [1e-2, 1e-4]])
def test_the_legend_covers_no_line_and_no_axis_has_an_offset(
    finished, tmp_path, monkeypatch, rates
):
    """Before, the loss legend sat inside its panel over the learning rate and the best-epoch
    line, and a linear lr axis wore a "1e-3" offset over the accuracy panel's label."""
    run = with_lr(finished, tmp_path / "run", rates)
    fig = drawn_figure(monkeypatch, lambda: plot_run(run))
    [legend] = fig.legends
    box = legend.get_window_extent()
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert any(line.get_label().startswith("best epoch") for line in lines)
    for line in lines:
        assert not box.overlaps(line.get_window_extent()), line.get_label()
    for ax in fig.axes:
        assert ax.get_legend() is None
        assert ax.yaxis.get_offset_text().get_text() == ""
    constant = len(set(rates)) == 1
    assert len(fig.axes) == (2 if constant else 3)  # a constant rate gets no axis of its own
    if constant:
        assert "learning rate 0.001 (constant)" in texts(legend)
    else:
        assert "learning rate" in texts(legend)


def test_the_overlay_says_its_dashed_lines_are_eval_mode_training(
    finished, stopped, tmp_path, monkeypatch
):
    fig = drawn_figure(monkeypatch, lambda: plot_runs([finished, stopped], tmp_path / "o.png"))
    [legend] = fig.legends
    assert "train, eval mode" in texts(legend)
    assert "training, eval mode (dashed)" in fig.get_suptitle()
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)


# --- dltrain runs: on a narrow terminal, piped, and runs outside runs/<name>/ -----------------


@pytest.fixture
def many_runs(finished, tmp_path) -> Path:
    """Three runs: two in runs/<name>/<time>, one killed (its summary gone), and one the user
    put in a folder of their own."""
    root = tmp_path / "root"
    copy_run(finished, root / "digits_small" / "20250103-120000")
    killed = copy_run(finished, root / "digits_small" / "20250104-120000")
    (killed / "summary.json").unlink()
    copy_run(finished, root / "experiments" / "mine")
    return root


def test_runs_on_a_60_column_terminal_drops_columns_and_never_wraps_a_run(
    cli, many_runs, monkeypatch
):
    from rich.console import Console

    from dltrain.cli import views

    terminal = Console(width=60, force_terminal=True, color_system=None, highlight=False)
    monkeypatch.setattr(views, "out", lambda: terminal)
    result = cli("runs", many_runs)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 60
    header = lines[0].split()
    assert header[0] == "run" and "params" not in header and "status" in header
    for label in ("digits_small/20250104-120000", "digits_small/20250103-120000"):
        assert any(line.startswith(label + " ") for line in lines), result.stdout
    assert any(line.startswith("experiments/mine ") for line in lines), result.stdout
    assert "killed," in result.stdout and "resumable" in result.stdout  # the status may wrap


def test_runs_piped_keeps_every_column_and_shows_a_folder_by_its_path(cli, many_runs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal behind the pipe changes nothing
    result = cli("runs", many_runs)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = " ".join(lines[0].split())
    assert header == "run model/data epochs val acc test acc params time status"
    [mine] = [line for line in lines if "mine" in line]
    assert mine.split()[:2] == ["experiments/mine", "mlp/digits"]  # not "digits_small ..."
    assert "killed, resumable" in result.stdout
    assert len(lines) == 2 + 3  # header, rule, one line per run
