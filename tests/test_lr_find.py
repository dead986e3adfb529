"""dltrain lr-find: the ramp, the smoothing, the two rules, the early stops, the seeds' spread,
and the CLI on the embedded digits (its files, exit codes, and a model left untouched)."""

import json
import math

import pytest
import torch

from dltrain.config import Config, load_config
from dltrain.errors import DltrainError
from dltrain.reporting.events import BatchEnd
from dltrain.tools import lr_find
from dltrain.training.session import build

BETA = lr_find.BETA


def test_ramp_rises_exponentially_from_start_to_end():
    lrs = lr_find.ramp(1e-7, 10.0, 100)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10.0)
    factor = (10.0 / 1e-7) ** (1 / 99)
    assert all(b / a == pytest.approx(factor) for a, b in zip(lrs, lrs[1:], strict=False))
    assert lr_find.ramp(1e-3, 1.0, 1) == [1e-3]


def test_recorder_sets_each_groups_rate_and_keeps_its_ratio():
    """The optimizer's groups get the ramp, step by step; a head at 10× the base stays 10×."""
    body, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    groups = [{"params": body.parameters(), "lr": 0.1}, {"params": head.parameters(), "lr": 1.0}]
    optimizer = torch.optim.SGD(groups, lr=0.1)
    lrs = lr_find.ramp(1e-4, 1e-1, 4)
    recorder = lr_find._Recorder(optimizer, 0.1, lrs)
    seen = []
    for _ in lrs:
        seen.append([group["lr"] for group in optimizer.param_groups])
        recorder.after_step()
        recorder(BatchEnd(1, 8, torch.tensor(1.0)))
    assert [body for body, _ in seen] == pytest.approx(lrs)
    assert [head for _, head in seen] == pytest.approx([10 * lr for lr in lrs])
    assert recorder.stopped == "steps" and len(recorder.losses) == 4


def test_smoothing_is_a_bias_corrected_exponential_average():
    losses = [2.3, 2.1, 1.7, 1.2, 0.9, 1.4]
    for n, smoothed in enumerate(lr_find.smooth(losses), start=1):
        weights = [(1 - BETA) * BETA ** (n - i) for i in range(1, n + 1)]
        hand = sum(w * x for w, x in zip(weights, losses, strict=False)) / (1 - BETA**n)
        assert smoothed == pytest.approx(hand, rel=1e-12)
    assert lr_find.smooth([5.0])[0] == pytest.approx(5.0)  # the correction: no pull to 0


LRS = [10.0**k for k in range(-6, 7)]  # 13 points, one decade apart
# (curve, index of the valley's rate, index of the steepest's rate); None: no suggestion
RULE_CASES = [
    # falls, flattens, blows up: the falling stretch is 0..9, its middle member 5; fastest at 2
    ([2.0, 1.9, 1.5, 0.9, 0.6, 0.5, 0.45, 0.42, 0.41, 0.405, 0.7, 2.0, 5.0], 5, 2),
    # falls all the way, ever slower
    ([13, 10, 8, 6.5, 5.5, 4.7, 4, 3.4, 2.9, 2.5, 2.2, 2.0, 1.9], 6, 1),
    # never falls
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], None, None),
    # a short dip, a rise, then a longer fall (6..12): the longer one wins
    ([3.0, 2.0, 2.9, 3.1, 3.2, 3.3, 3.0, 2.6, 2.0, 1.3, 1.0, 0.9, 0.8], 9, 8),
]


@pytest.mark.parametrize(("curve", "valley", "steepest"), RULE_CASES)
def test_valley_and_steepest_rules(curve, valley, steepest):
    assert lr_find.valley(LRS, curve) == (None if valley is None else LRS[valley])
    assert lr_find.steepest(LRS, curve) == (None if steepest is None else LRS[steepest])


def test_valley_reads_members_not_the_span():
    """Noise at the start adds a few members far to the left; the middle member stays in the
    steady fall (the span's midpoint would not)."""
    noise = [3.0, 3.5, 2.95, 3.4, 2.9, 3.3, 2.85, 3.2, 2.8]  # 5 members: 0, 2, 4, 6, 8
    curve = noise + [2.7 - 0.1 * k for k in range(20)]  # 20 members: 9 .. 28
    lrs = [10.0 ** (k / 5) for k in range(len(curve))]
    assert lr_find.valley(lrs, curve) == lrs[9 + 7]  # the 13th of 25 members
    assert lr_find.valley(lrs, curve) != lrs[(0 + 28) // 2]


def test_window_skips_the_warm_up_and_the_blow_up():
    assert lr_find.window(100, 100) == slice(10, 95)
    assert lr_find.window(40, 100) == slice(10, 35)
    assert lr_find.window(12, 100) == slice(0, 12)  # too few left: every point


def _feed(losses, steps=50):
    """Losses through a recorder, one optimizer step each; returns it and its answers."""
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    recorder = lr_find._Recorder(optimizer, 1.0, lr_find.ramp(1e-3, 1.0, steps))
    answers = []
    for loss in losses:
        recorder.after_step()
        answers.append(recorder(BatchEnd(1, 8, torch.tensor(loss))))
        if answers[-1]:
            break
    return recorder, answers


def test_stops_once_the_smoothed_loss_passes_four_times_its_minimum():
    losses = [1.0, 0.8, 0.5, 0.3, 0.2] + [0.2 * 3**k for k in range(1, 12)]
    smoothed = lr_find.smooth(losses)
    first = next(i for i, s in enumerate(smoothed) if s > 4 * min(smoothed[: i + 1]))
    recorder, answers = _feed(losses)
    assert recorder.stopped == "diverged" and len(answers) == first + 1
    assert answers[-1] and "4× its minimum" in answers[-1]
    assert all(answer is None for answer in answers[:-1])
    assert recorder.smoothed == pytest.approx(smoothed[: first + 1])


def test_stops_when_the_loss_turns_nan():
    recorder, answers = _feed([1.0, 0.9, math.nan, 0.5])
    assert recorder.stopped == "nan" and len(answers) == 3 and "step 3" in answers[-1]
    assert recorder.losses == pytest.approx([1.0, 0.9])  # the NaN is not a point of the curve


def test_stops_after_its_steps():
    recorder, answers = _feed([1.0] * 10, steps=6)
    assert recorder.stopped == "steps" and len(answers) == 6 and len(recorder.losses) == 6


def test_spread_over_three_times_is_unreliable():
    assert lr_find.spread_note([1e-3]) is None
    assert lr_find.spread_note([1e-3, 2e-3, 2.9e-3]) is None
    note = lr_find.spread_note([1e-3, 2e-3, 4e-3], steps=100, batch_size=32)
    assert "4.0×" in note and "unreliable" in note
    assert "batches and the initialization" in note
    assert "--steps 300" in note and "--set data.batch_size=128" in note


def test_summary_takes_the_median_and_the_range():
    curves = [{"valley": v, "steepest": None} for v in (1e-3, 8e-3, 2e-3)]
    summary = lr_find.summarize(curves, Config(), 100)
    assert summary["valley"] == 2e-3 and summary["valley_range"] == [1e-3, 8e-3]
    assert lr_find.middle([1e-3, 4e-3]) == pytest.approx(2e-3)  # even: the geometric mean
    assert summary["steepest"] is None and summary["unreliable"]
    assert summary["set"] == "--set optim.lr=0.002"


@pytest.fixture
def digits_cfg(digits_config):
    return load_config(digits_config)


def test_probe_leaves_the_sessions_model_as_built(digits_cfg, tmp_path):
    s = build(digits_cfg, tmp_path / "lr")
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    curve = lr_find.probe(s, 40, 1e-4, 10.0)
    after = s.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert curve["steps"] >= 20 and curve["stopped"] in ("steps", "diverged")
    assert list((tmp_path / "lr").iterdir()) == []  # build writes nothing in its folder


def test_probe_runs_more_than_one_pass(digits_cfg, tmp_path):
    """36 batches an epoch (1150 samples of 32): 50 steps take a second pass."""
    s = build(digits_cfg, tmp_path / "lr")
    curve = lr_find.probe(s, 50, 1e-6, 1e-4)  # too low to diverge
    assert curve["stopped"] == "steps" and curve["steps"] == 50
    assert curve["lrs"] == pytest.approx(lr_find.ramp(1e-6, 1e-4, 50))


def test_probe_catches_a_nan_loss(digits_cfg, tmp_path):
    s = build(digits_cfg, tmp_path / "lr")
    plain, calls = s.loss_fn, []

    def turns_nan(logits, labels):
        calls.append(1)
        loss = plain(logits, labels)
        return loss * math.nan if len(calls) >= 5 else loss

    s.loss_fn = turns_nan
    curve = lr_find.probe(s, 40, 1e-4, 1e-2)
    assert curve["stopped"] == "nan" and curve["steps"] == 4 and "NaN" in curve["why"]


def test_a_schedule_is_switched_off_with_a_note(digits_config):
    cfg = load_config(digits_config, ["schedule.name=cosine", "train.accumulate=2"])
    found = lr_find.notes(cfg)
    assert any("cosine" in text and "switches it off" in text for text in found)
    assert any("train.accumulate" in text for text in found)
    assert lr_find.notes(load_config(digits_config)) == []


def test_seeds_differ_but_share_the_split(digits_cfg):
    configs = lr_find.seed_configs(digits_cfg, 3)
    assert [cfg.seed for cfg in configs] == [0, 1, 2]
    assert {cfg.data.split_seed for cfg in configs} == {0}


def _set_line(stdout: str) -> float:
    lines = [line for line in stdout.splitlines() if line.startswith("--set optim.lr=")]
    assert len(lines) == 1, stdout
    return float(lines[0].removeprefix("--set optim.lr="))


def test_cli_writes_its_folder_only(cli, digits_config, tmp_path, monkeypatch):
    """The default folder is runs/<name>/lr-find-<time>/ and holds the JSON and the plot;
    no training run appears beside it. The --set line is a float the config takes."""
    monkeypatch.chdir(tmp_path)
    result = cli("lr-find", digits_config, "--steps", "40", "--start", "1e-4")
    assert result.exit_code == 0, result.output
    folders = list((tmp_path / "runs" / "digits_small").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("lr-find-")
    assert {p.name for p in folders[0].iterdir()} == {"lr_find.json", "lr_find.png"}
    data = json.loads((folders[0] / "lr_find.json").read_text())
    lr = _set_line(result.stdout)
    assert lr == pytest.approx(data["summary"]["valley"], rel=5e-3)
    assert load_config(digits_config, [f"optim.lr={lr}"]).optim.lr == lr
    curve = data["seeds"][0]
    assert len(curve["lrs"]) == len(curve["losses"]) == len(curve["smoothed"]) == curve["steps"]
    assert curve["lrs"][0] == pytest.approx(1e-4) and curve["stopped"] in ("steps", "diverged")


def test_cli_three_seeds_three_curves_and_a_range(cli, digits_config, tmp_path):
    out = tmp_path / "probe"
    result = cli("lr-find", digits_config, "--steps", "30", "--start", "1e-4", "--seeds", "3",
                 "--run-dir", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((out / "lr_find.json").read_text())
    assert [curve["seed"] for curve in data["seeds"]] == [0, 1, 2]
    assert data["seeds"][0]["losses"] != data["seeds"][1]["losses"]
    low, high = data["summary"]["valley_range"]
    assert low <= data["summary"]["valley"] <= high
    assert "range over 3 seeds" in result.stdout
    assert (out / "lr_find.png").stat().st_size > 10_000
    again = cli("lr-find", digits_config, "--out", out)
    assert again.exit_code == 1 and "already holds an lr-find" in again.stderr


BAD_INPUT = [
    (["--steps", "0"], 1, "--steps must be at least 8 (got 0)"),
    (["--steps", "-3"], 1, "--steps must be at least 8 (got -3)"),
    (["--steps", "3"], 1, "--steps must be at least 8 (got 3): the rules skip"),
    (["--steps", "7"], 1, "--steps must be at least 8 (got 7)"),
    (["--start", "1e-300", "--end", "1e300"], 1, "--start 1e-300 is outside 1e-10 to 1000"),
    (["--start", "1e-11"], 1, "--start 1e-11 is outside 1e-10 to 1000"),
    (["--end", "1e300"], 1, "--end 1e+300 is outside 1e-10 to 1000"),
    (["--end", "1001"], 1, "--end 1001 is outside 1e-10 to 1000"),
    (["--end", "inf"], 1, "--end must be above --start 1e-07 (got inf)"),
    (["--start", "nan"], 1, "--start must be a learning rate above 0 (got nan)"),
    (["--start", "0"], 1, "--start must be a learning rate above 0"),
    (["--start", "-1e-3"], 1, "--start must be a learning rate above 0"),
    (["--end", "1e-8"], 1, "--end must be above --start"),
    (["--start", "1", "--end", "1"], 1, "--end must be above --start"),
    (["--seeds", "0"], 1, "--seeds must be at least 1"),
    (["--set", "optim.lr=fast"], 2, "optim.lr"),
    (["--set", "optim.lrr=1"], 2, "optim.lrr"),
]


@pytest.mark.parametrize(("args", "code", "words"), BAD_INPUT)
def test_bad_input_is_one_line(cli, digits_config, tmp_path, monkeypatch, args, code, words):
    monkeypatch.chdir(tmp_path)
    result = cli("lr-find", digits_config, *args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert not (tmp_path / "runs").exists()


def test_the_fewest_steps_are_what_the_window_needs():
    """At min_steps() the rules read MIN_POINTS points past the warm-up and before the blow-up;
    one step fewer and window() would hand them the whole curve, both ends included."""
    n = lr_find.min_steps()
    assert n == 8
    read = lr_find.window(n, n)
    assert read.start == n // 10 and read.stop == n - lr_find.TAIL
    assert read.stop - read.start == lr_find.MIN_POINTS
    assert lr_find.window(n - 1, n - 1) == slice(0, n - 1)


def test_the_shortest_allowed_probe_suggests_a_finite_rate(cli, digits_config, tmp_path):
    result = cli("lr-find", digits_config, "--steps", lr_find.min_steps(), "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert 1e-7 <= _set_line(result.stdout) <= 10
    # ... and says that so short a probe gives only a rough one
    said = " ".join(result.stderr.split())
    assert f"a probe of {lr_find.min_steps()} steps is shorter than the 50 steps" in said
    assert "the suggestion is rough" in said
    long_enough = cli("lr-find", digits_config, "--steps", 50, "--out", tmp_path / "q")
    assert long_enough.exit_code == 0 and "is rough" not in long_enough.stderr


def test_the_widest_range_suggests_a_rate_within_it(cli, digits_config, tmp_path):
    low, high = lr_find.LR_RANGE
    result = cli("lr-find", digits_config, "--steps", 20, "--start", low, "--end", high,
                 "--out", tmp_path / "p")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert low <= _set_line(result.stdout) <= high


@pytest.mark.parametrize("bad", [math.inf, math.nan, 1e-300, 1e300])
def test_a_suggestion_outside_the_range_is_an_error_not_a_line(digits_cfg, bad):
    """Should a rule ever give what no ramp holds, it is refused, never printed as --set."""
    curve = {"valley": bad, "steepest": 1e-3}
    with pytest.raises(DltrainError, match="the valley rule gave .*not a learning rate"):
        lr_find.summarize([curve], digits_cfg, 100)


def test_missing_config_is_one_line(cli, tmp_path):
    result = cli("lr-find", tmp_path / "nope.yaml")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: config file not found: {tmp_path / 'nope.yaml'} (give the path of a YAML file)"
    ]


def test_cli_json_is_one_object_and_quiet_the_set_line(cli, digits_config, tmp_path):
    args = ["lr-find", digits_config, "--steps", "40", "--start", "1e-4"]
    as_json = cli(*args, "--out", tmp_path / "j", "--json")
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.stdout)
    assert result["summary"]["set"].startswith("--set optim.lr=") and "seed 0" not in as_json.stderr
    assert result["json"] == str(tmp_path / "j" / "lr_find.json") and "config" not in result
    quiet = cli(*args, "--out", tmp_path / "q", "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout.splitlines() == [result["summary"]["set"]]  # the same seed, the same lr
