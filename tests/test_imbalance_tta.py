"""Class imbalance (train.class_weights, data.sampler: balanced, eval's per-class precision,
recall and F1) and test-time augmentation (eval --tta, eval.tta)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltrain.data import Batches, DataInfo, TensorSplit, tta_views
from dltrain.tools.evaluation import class_metrics
from dltrain.training import session as sessions
from dltrain.training.engine import fit
from dltrain.training.epoch import evaluate
from tests.test_training import _cfg


def test_balanced_class_weights_are_the_inverse_frequency_with_mean_1(tmp_path):
    s = sessions.build(_cfg(**{"train.class_weights": "balanced"}), tmp_path)
    counts = torch.bincount(s.splits.train.labels, minlength=10).double()
    expected = (1 / counts) / (1 / counts).mean()
    torch.testing.assert_close(s.loss_fn.weight.double(), expected, rtol=1e-6, atol=0)
    assert s.loss_fn.weight.mean().item() == pytest.approx(1.0)
    given = [float(k + 1) for k in range(10)]
    s = sessions.build(_cfg(**{"train.class_weights": given}), tmp_path / "list")
    assert s.loss_fn.weight.tolist() == given
    assert sessions.build(_cfg(), tmp_path / "none").loss_fn.weight is None


def test_a_weight_list_of_the_wrong_length_is_a_config_error(cli, digits_config):
    result = cli("train", digits_config, "--set", "train.class_weights=[1, 2, 3]")
    assert result.exit_code == 2
    assert "train.class_weights: 3 weights for 10 classes; give one weight per class" in (
        result.stderr
    )


def test_the_balanced_sampler_draws_classes_equally_and_replays_on_resume():
    labels = torch.tensor([0] * 90 + [1] * 10)
    split = TensorSplit(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), labels)
    info = DataInfo("x", ["a", "b"], 1, (2, 2), [0.5], [0.5])
    weights = 1.0 / torch.bincount(labels)[labels].double()
    batches = Batches(split, info, 25, shuffle=True, seed=4, weights=weights)
    drawn = torch.cat([y for _ in range(20) for _, y in batches])
    assert 0.45 < drawn.float().mean().item() < 0.55  # class 1 is 10% of the data, ~50% drawn
    state = batches.generator.get_state()
    first = [y for _, y in batches]
    batches.generator.set_state(state)  # what a checkpoint restores
    assert all(torch.equal(a, b) for a, b in zip(first, (y for _, y in batches), strict=True))


def test_both_corrections_at_once_are_warned_about(cli, digits_config):
    both = ["--set", "train.class_weights=balanced", "--set", "data.sampler=balanced"]
    result = cli("train", digits_config, *both)
    assert result.exit_code == 0, result.output
    assert "together they over-correct" in result.stderr
    alone = cli("train", digits_config, "--set", "data.sampler=balanced")
    assert "over-correct" not in alone.stderr


def test_per_class_precision_recall_f1_macro_f1_and_balanced_accuracy():
    confusion = [[8, 2, 0], [1, 3, 0], [0, 0, 0]]  # class 2 has no samples and no predictions
    rows = class_metrics(confusion, ["a", "b", "c"])
    a, b, c = rows
    assert (a["precision"], a["recall"]) == (8 / 9, 0.8)
    assert a["f1"] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert (b["precision"], b["recall"]) == (3 / 5, 0.75)
    assert c["recall"] is None and c["f1"] is None and c["precision"] is None


def test_eval_reports_the_imbalance_metrics_and_tta(cli, tmp_path):
    fit(_cfg(**{"train.epochs": 1}), tmp_path)
    result = cli("eval", "--ckpt", tmp_path / "best.pt", "--tta", "flip")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "eval-val.json").read_text())
    rows = [row for row in saved["per_class"] if row["total"]]
    assert saved["macro_f1"] == pytest.approx(sum(r["f1"] for r in rows) / len(rows))
    assert saved["balanced_acc"] == pytest.approx(sum(r["recall"] for r in rows) / len(rows))
    assert saved["tta"]["mode"] == "flip" and 0 <= saved["tta"]["acc"] <= 1
    assert saved["tta"]["acc"] != saved["acc"]  # a mirrored digit is another image
    assert f"with tta flip: accuracy {saved['tta']['acc']:.4f}" in result.stdout
    assert "warning: digits holds handwritten characters" in result.stderr
    assert "precision" in result.stdout and "f1" in result.stdout
    again = cli("eval", "--ckpt", tmp_path / "best.pt", "--set", "eval.tta=flip+shift", "--json")
    assert json.loads(again.stdout)["tta"]["mode"] == "flip+shift"
    plain = cli("eval", "--ckpt", tmp_path / "best.pt", "--json")
    assert "tta" not in json.loads(plain.stdout)
    bad = cli("eval", "--ckpt", tmp_path / "best.pt", "--tta", "mirror")
    # A choice on the command line: typer refuses it (a usage error, exit 2) and names them.
    assert bad.exit_code == 2 and "Invalid value for '--tta'" in bad.stderr
    assert "'flip+shift'" in bad.stderr


def test_tta_logits_are_the_mean_of_the_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(5, 1, 3, 4), torch.tensor([0, 1, 2, 0, 1])
    mean = (model(x) + model(x.flip(3))) / 2
    flipped = evaluate(model, [(x, y)], tta="flip")
    assert flipped["loss"] == pytest.approx(F.cross_entropy(mean, y).item(), rel=1e-6)
    assert flipped["acc"] == pytest.approx((mean.argmax(1) == y).float().mean().item())
    views = tta_views(x, "flip+shift")
    assert len(views) == 6
    assert torch.equal(views[2][..., 1:, 1:], x[..., :-1, :-1])  # moved one pixel down-right
    assert torch.equal(views[3][..., :-1, :-1], x[..., 1:, 1:])  # and one up-left
    assert torch.equal(views[4], views[2].flip(3))
    six = torch.stack([model(v) for v in views]).mean(0)
    shifted = evaluate(model, [(x, y)], tta="flip+shift")
    assert shifted["loss"] == pytest.approx(F.cross_entropy(six, y).item(), rel=1e-6)
