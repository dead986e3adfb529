"""`dltrain eval` (metrics files, per-class table, test ledger) and `dltrain predict`, through
the real CLI on a model trained once on the embedded digits."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import DIGITS_SMALL

N_IMAGES = 20


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Train the small digits MLP once (8 epochs, ~95% val accuracy); returns the run folder."""
    from typer.testing import CliRunner

    from dltrain.cli import app

    root = tmp_path_factory.mktemp("run")
    config = root / "config.yaml"
    config.write_text(DIGITS_SMALL)
    args = ["train", str(config), "--run-dir", str(root / "out"), "--set", "train.epochs=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.fixture(scope="module")
def digits_splits(digits_run):
    """The splits as the run saw them (same config, same seed)."""
    from dltrain.config import load_config
    from dltrain.data import build_splits

    cfg = load_config(digits_run / "config.yaml")
    return cfg, build_splits(cfg.data, cfg.seed)


@pytest.fixture(scope="module")
def digit_pngs(digits_splits, tmp_path_factory):
    """The first test-split digits as 8x8 gray PNGs (the uint8 values dltrain trains on)."""
    _, splits = digits_splits
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i in range(N_IMAGES):
        path = folder / f"{i:02d}.png"
        Image.fromarray(splits.test.images[i, 0].numpy(), mode="L").save(path)
        paths.append(path)
    return folder, paths, splits.test.labels[:N_IMAGES].tolist()


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0]


# --- eval --------------------------------------------------------------------------------


def test_eval_writes_metrics_and_a_consistent_confusion_matrix(cli, digits_run, digits_splits):
    ckpt = digits_run / "best.pt"
    result = cli("eval", "--ckpt", ckpt, "--split", "val", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"acc", "loss", "samples", "split", "epoch"} <= set(metrics)
    assert metrics["split"] == "val" and metrics["samples"] == 288
    assert json.loads((digits_run / "eval-val.json").read_text()) == metrics
    assert metrics["checkpoint"] == str(ckpt)
    assert metrics["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()

    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 288
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["acc"])
    assert metrics["acc"] <= metrics["top5"] <= 1

    _, splits = digits_splits
    counts = torch.bincount(splits.val.labels, minlength=10).tolist()
    per_class = metrics["per_class"]
    assert [row["class"] for row in per_class] == [str(i) for i in range(10)]
    assert [row["total"] for row in per_class] == counts
    assert [row["correct"] for row in per_class] == np.diag(confusion).tolist()
    for row in per_class:
        assert row["acc"] == pytest.approx(row["correct"] / row["total"])

    with open(digits_run / "confusion-val.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == [str(i) for i in range(10)]
    assert [row[0] for row in rows[1:]] == [str(i) for i in range(10)]
    assert [[int(n) for n in row[1:]] for row in rows[1:]] == metrics["confusion"]
    assert not [p for p in digits_run.iterdir() if "tmp" in p.name]


def test_eval_prints_summary_top5_and_tables(cli, digits_run):
    result = cli("eval", "--ckpt", digits_run / "best.pt")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("val: accuracy 0.") and "288 samples" in out
    assert "top-5 accuracy 0." in out or "top-5 accuracy 1.0000" in out
    assert "per-class accuracy" in out and "correct" in out and "total" in out
    assert "confusion matrix (rows: true class, columns: predicted class)" in out
    assert "confusion-val.csv" in out and result.stderr == ""


def test_test_ledger_counts_uses_and_warns_from_the_second(cli, digits_run):
    ckpt, ledger = digits_run / "best.pt", digits_run / "test_ledger.jsonl"
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()

    first = cli("eval", "--ckpt", ckpt, "--split", "test", "--json")
    assert first.exit_code == 0, first.output
    assert "warning" not in first.stderr and json.loads(first.stdout)["test_uses"] == 1
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(entries) == 1
    assert entries[0]["sha256"] == digest and entries[0]["checkpoint"] == str(ckpt)
    assert {"time", "epoch", "acc"} <= set(entries[0])
    assert (digits_run / "eval-test.json").is_file()

    second = cli("eval", "--ckpt", ckpt, "--split", "test")
    assert second.exit_code == 0, second.output
    assert second.stdout.startswith("test: accuracy 0.") and "359 samples" in second.stdout
    assert "used 2 times" in second.stderr and "select models on validation" in second.stderr
    assert len(ledger.read_text().splitlines()) == 2

    val = cli("eval", "--ckpt", ckpt, "--split", "val")
    assert val.exit_code == 0 and "warning" not in val.stderr
    assert len(ledger.read_text().splitlines()) == 2


# --- predict -----------------------------------------------------------------------------


def test_predict_recognizes_test_digits(cli, digits_run, digit_pngs):
    folder, paths, labels = digit_pngs
    ckpt = digits_run / "best.pt"
    by_files = cli("predict", "--ckpt", ckpt, *paths, "--json")
    assert by_files.exit_code == 0, by_files.output
    results = json.loads(by_files.stdout)
    assert [r["file"] for r in results] == [str(p) for p in paths]
    hits = sum(r["top"][0]["class"] == str(label) for r, label in zip(results, labels, strict=True))
    assert hits >= 0.8 * N_IMAGES, (hits, N_IMAGES)
    for r in results:
        probs = [item["prob"] for item in r["top"]]
        assert len(probs) == 3 and 0 < probs[0] <= 1
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6

    by_folder = cli("predict", "--ckpt", ckpt, folder, "--json", "--topk", "1")
    assert by_folder.exit_code == 0, by_folder.output
    folder_results = json.loads(by_folder.stdout)
    assert [r["file"] for r in folder_results] == [str(p) for p in paths]
    assert [r["top"][0]["class"] for r in folder_results] == [r["top"][0]["class"] for r in results]

    text = cli("predict", "--ckpt", ckpt, paths[0])
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith(f"{paths[0]}: {results[0]['top'][0]['class']} (")


def test_predict_preprocessing_matches_the_training_path(digits_splits, digit_pngs):
    from dltrain.data import make_loader
    from dltrain.tools.predict import to_batch

    cfg, splits = digits_splits
    _, paths, _ = digit_pngs
    images, _ = next(iter(make_loader(splits, "test", cfg.data, torch.device("cpu"))))
    ours = to_batch(paths, splits.info, torch.device("cpu"))
    torch.testing.assert_close(ours, images[:N_IMAGES])


@pytest.mark.parametrize(
    "case",
    ["not_an_image", "broken_png", "missing", "empty_folder", "topk_zero", "truncated_ckpt"],
)
def test_predict_errors_are_one_line(cli, digits_run, digit_pngs, tmp_path, case):
    ckpt, image = digits_run / "best.pt", digit_pngs[1][0]
    if case == "not_an_image":
        bad = tmp_path / "notes.txt"
        bad.write_text("hello")
        _one_line_error(cli("predict", "--ckpt", ckpt, image, bad), bad, "is not an image")
    elif case == "broken_png":
        bad = tmp_path / "broken.png"
        bad.write_bytes(image.read_bytes()[:40])
        _one_line_error(cli("predict", "--ckpt", ckpt, bad), bad, "is not an image")
    elif case == "missing":
        _one_line_error(cli("predict", "--ckpt", ckpt, tmp_path / "nope"), tmp_path / "nope")
    elif case == "empty_folder":
        (tmp_path / "notes.txt").write_text("not an image, skipped in folders")
        (tmp_path / ".hidden.png").write_bytes(image.read_bytes())
        _one_line_error(cli("predict", "--ckpt", ckpt, tmp_path), tmp_path, "no image files")
    elif case == "topk_zero":
        _one_line_error(cli("predict", "--ckpt", ckpt, image, "--topk", "0"), "topk")
    else:
        damaged = tmp_path / "best.pt"
        damaged.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        _one_line_error(cli("predict", "--ckpt", damaged, image), damaged, "damaged")
        _one_line_error(cli("eval", "--ckpt", damaged), damaged, "damaged")


RGB_CONFIG = """\
name: rgb
device: cpu
data:
  dataset: fake
  batch_size: 16
  fake: {train_size: 48, test_size: 8, classes: 4, channels: 3, image_size: 16}
model: {name: cnn, channels: [4, 8]}
train: {epochs: 1}
"""


def test_predict_rgb_checkpoint_resizes_and_clamps_topk(cli, write_config, tmp_path):
    run_dir = tmp_path / "run"
    trained = cli("train", write_config(RGB_CONFIG), "--run-dir", run_dir)
    assert trained.exit_code == 0, trained.output
    rng = np.random.default_rng(0)
    colour, gray = tmp_path / "colour.png", tmp_path / "gray.jpg"
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(colour)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(gray)
    result = cli("predict", "--ckpt", run_dir / "best.pt", colour, gray, "--topk", "10", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert [len(r["top"]) for r in results] == [4, 4]
    assert sum(item["prob"] for item in results[0]["top"]) == pytest.approx(1, abs=1e-5)
    assert {item["class"] for item in results[1]["top"]} == {f"class{i}" for i in range(4)}
