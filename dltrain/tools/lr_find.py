"""`dltrain lr-find`: the learning-rate range test as fastai users know it, on K seeds.

A copy of the model trains for a few hundred mini-batches while the learning rate rises
exponentially from `start` to `end`; the loss, smoothed, falls and then blows up. Two rules
read a suggestion off the smoothed curve: the valley (halfway along the longest stretch over
which the loss keeps falling) and the steepest descent. With several seeds the sweep is
repeated on other batches and another initialization: when the suggestions disagree by more
than SPREAD_LIMIT, one sweep's answer is noise, and the summary says so.

Plain functions returning dicts; nothing here prints (the CLI does). The model a config
builds and the run folder a training run would write are never touched: the probe trains a
deep copy with its own optimizer and writes lr_find.json and lr_find.png in its own folder.
torch comes in with the functions that train: the rules themselves import light.
"""

from __future__ import annotations

import copy
import math
import statistics
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dltrain.config import Config
from dltrain.errors import DltrainError
from dltrain.reporting import trackers
from dltrain.reporting.events import BatchEnd, Event, Listener, Note

if TYPE_CHECKING:
    from dltrain.training.session import Session

BETA = 0.98  # the smoothing of the loss: an exponential average, bias-corrected
DIVERGED = 4.0  # stop once the smoothed loss passes this multiple of its minimum
SPREAD_LIMIT = 3.0  # suggestions of several seeds further apart than this: unreliable
RULES = ("valley", "steepest")  # the valley is the one suggested (fastai's default)
TAIL = 5  # the last points, the blow-up, that both rules skip (as fastai does)
MIN_POINTS = 3  # what the rules need: steepest's central difference takes 3 points
# Learning rates a probe may span. Below 1e-10 an update (Adam's is about lr per weight) is under
# the rounding step of float32 weights, so nothing trains; above 1e3 the loss of every optimizer
# here has blown up long before (the default end, as fastai's, is 10).
LR_RANGE = (1e-10, 1e3)


@dataclass(frozen=True)
class ProbeEnd:
    """One seed's probe is done: its curve and what the rules found on it (lr_find.json's)."""

    curve: dict


def min_steps() -> int:
    """The shortest probe whose whole curve leaves the rules MIN_POINTS between the warm-up
    and the blow-up that `window` skips (8); a shorter one has them read both ends."""
    return next(n for n in range(1, 1000) if n - n // 10 - TAIL >= MIN_POINTS)


def check_options(steps: int, start: float, end: float, seeds: int) -> None:
    """The probe's own options, checked before any config is read (NaN fails every test)."""
    if not steps >= min_steps():
        raise DltrainError(
            f"--steps must be at least {min_steps()} (got {steps}): the rules skip the first "
            f"tenth and the last {TAIL} steps and need {MIN_POINTS} points between them"
        )
    low, high = LR_RANGE
    if not (start > 0 and math.isfinite(start)):
        raise DltrainError(f"--start must be a learning rate above 0 (got {start:g})")
    if not (end > start and math.isfinite(end)):
        raise DltrainError(f"--end must be above --start {start:g} (got {end:g})")
    for flag, value in (("--start", start), ("--end", end)):
        if not low <= value <= high:
            raise DltrainError(
                f"{flag} {value:g} is outside {low:g} to {high:g}, the learning rates a probe "
                f"may span: below {low:g} an update is lost in float32's rounding of the "
                f"weights, above {high:g} the loss has blown up long before (--end's default "
                "is 10)"
            )
    if not seeds >= 1:
        raise DltrainError(f"--seeds must be at least 1 (got {seeds})")


def ramp(start: float, end: float, steps: int) -> list[float]:
    """The learning rate of each step: from `start` at the first to `end` at the last, the same
    factor between consecutive steps (a straight line on a log axis)."""
    if steps == 1:
        return [start]
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


class Smoother:
    """avg = beta * avg + (1 - beta) * loss from avg = 0, divided by (1 - beta ** n) after n
    losses: without that correction the first values would be pulled towards 0."""

    def __init__(self, beta: float = BETA):
        self.beta, self.average, self.count = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        return self.average / (1 - self.beta**self.count)


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    smoother = Smoother(beta)
    return [smoother.add(loss) for loss in losses]


def valley(lrs: list[float], smoothed: list[float]) -> float | None:
    """The learning rate halfway along the longest stretch over which the loss keeps falling
    (fastai's default rule): the middle member of the longest strictly decreasing subsequence
    of the smoothed losses. Its members crowd where the loss falls step after step and thin
    out over noisy flat parts, so the middle lands in the real descent. None when the loss
    never falls. O(n²): fine for a few thousand steps."""
    count = len(smoothed)
    length, previous = [1] * count, [None] * count  # the longest run ending at i, its link
    for i in range(count):
        for j in range(i):
            if smoothed[j] > smoothed[i] and length[j] + 1 > length[i]:
                length[i], previous[i] = length[j] + 1, j
    if count == 0 or max(length) < 2:
        return None
    members = [length.index(max(length))]  # the earliest of equally long runs, from its end
    while previous[members[-1]] is not None:
        members.append(previous[members[-1]])
    members.reverse()
    return lrs[members[len(members) // 2]]


def window(count: int, steps: int) -> slice:
    """The points both rules read, as fastai's lr_find does: without the first tenth of the
    probe (the smoother's warm-up on an untrained model) and the last TAIL (the blow-up);
    all of them when that would leave fewer than MIN_POINTS (a probe that stopped early)."""
    first, last = steps // 10, count - TAIL
    return slice(first, last) if last - first >= MIN_POINTS else slice(0, count)


def steepest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The learning rate where the smoothed loss falls fastest against log(lr): the most
    negative central difference. None when it never falls (or there are under 3 points)."""
    logs = [math.log(lr) for lr in lrs]
    slopes = {
        i: (smoothed[i + 1] - smoothed[i - 1]) / (logs[i + 1] - logs[i - 1])
        for i in range(1, len(smoothed) - 1)
    }
    best = min(slopes, key=slopes.get, default=None)
    return lrs[best] if best is not None and slopes[best] < 0 else None


def short_note(steps: int) -> str | None:
    """Why a probe shorter than the smoothing's memory (1 / (1 - BETA): 50 steps) gives only a
    rough suggestion; None for a long enough one."""
    memory = round(1 / (1 - BETA))
    if steps >= memory:
        return None
    return (
        f"a probe of {steps} steps is shorter than the {memory} steps the loss is smoothed "
        f"over, so each point of the curve still leans on the first losses: the suggestion is "
        f"rough; for one to rely on, probe longer (--steps 100, the default)"
    )


def spread_note(suggestions: list[float], steps: int = 100, batch_size: int = 64) -> str | None:
    """Why the suggestions of several seeds cannot be trusted, when they differ by more than
    SPREAD_LIMIT; None when they agree (or there is only one)."""
    if len(suggestions) < 2:
        return None
    low, high = min(suggestions), max(suggestions)
    if high <= SPREAD_LIMIT * low:
        return None
    return (
        f"the valley suggestions of {len(suggestions)} seeds spread over {high / low:.1f}× "
        f"({low:.3g} to {high:.3g}), more than {SPREAD_LIMIT:g}×: the curve depends on the "
        "batches and the initialization more than on the learning rate, so the suggestion is "
        f"unreliable; try a longer probe (--steps {steps * 3}) or a larger batch "
        f"(--set data.batch_size={batch_size * 4})"
    )


def middle(values: list[float]) -> float:
    """The median on a log scale (learning rates compare by their ratio): the middle value,
    or the geometric mean of the two middle ones."""
    ordered, half = sorted(values), len(values) // 2
    return ordered[half] if len(values) % 2 else math.sqrt(ordered[half - 1] * ordered[half])


class _Recorder:
    """The ramp and the recorder in one. train_one_epoch calls `after_step` after each
    optimizer step (the next rate is set) and the recorder with every batch: a step's point
    is the mean loss of its batches (several with train.accumulate) at the rate it used."""

    def __init__(self, optimizer, base_lr: float, lrs: list[float]):
        self.optimizer, self.lrs = optimizer, lrs
        # Each group keeps its ratio to optim.lr: a head with head_lr_mult rises with the rest.
        self.ratios = [group["lr"] / base_lr for group in optimizer.param_groups]
        self.losses, self.smoothed, self.pending = [], [], []
        self.smoother, self.stepped = Smoother(), False
        self.stopped, self.why = None, ""
        self._set(0)

    def _set(self, index: int) -> None:
        for group, ratio in zip(self.optimizer.param_groups, self.ratios, strict=True):
            group["lr"] = self.lrs[index] * ratio

    def after_step(self) -> None:
        self.stepped = True  # this step's point is recorded at its batch event, right after
        self._set(min(len(self.losses) + 1, len(self.lrs) - 1))

    def __call__(self, event: Event) -> str | None:
        """A non-empty answer stops the pass at this optimizer step (epoch.Channel)."""
        if not isinstance(event, BatchEnd) or self.stopped:
            return None
        # One device sync per batch: the stop rules need every value as it comes.
        self.pending.append(float(event.loss))
        if not self.stepped:
            return None
        loss, self.pending, self.stepped = statistics.fmean(self.pending), [], False
        return self._record(loss)

    def _record(self, loss: float) -> str | None:
        step, lr = len(self.losses) + 1, self.lrs[len(self.losses)]
        if not math.isfinite(loss):
            return self.stop("nan", f"the loss turned NaN/Inf at step {step} (lr {lr:.3g})")
        self.losses.append(loss)
        self.smoothed.append(self.smoother.add(loss))
        lowest = min(self.smoothed)
        if self.smoothed[-1] > DIVERGED * lowest:
            return self.stop(
                "diverged",
                f"the smoothed loss passed {DIVERGED:g}× its minimum ({lowest:.3g}) at step "
                f"{step} (lr {lr:.3g})",
            )
        if step == len(self.lrs):
            return self.stop("steps", f"ran all {step} steps")
        return None

    def stop(self, code: str, why: str) -> str:
        self.stopped, self.why = code, why
        return why


def probe(session: Session, steps: int, start: float, end: float) -> dict:
    """One sweep on a built Session `session`: a deep copy of its model with a fresh optimizer
    (s.model keeps its weights) trains through train_one_epoch, exactly as training does
    (loss, precision, mixup, augmentation, accumulation, clipping), for `steps` optimizer
    steps, pass after pass. No schedule, no validation, no EMA. Returns the curve."""
    from dltrain.optim import build_optimizer
    from dltrain.training.epoch import Channel, NonFiniteLoss, Progress, train_one_epoch

    model = copy.deepcopy(session.model)
    optimizer = build_optimizer(model, session.cfg.optim, model.head_name)
    recorder = _Recorder(optimizer, session.cfg.optim.lr, ramp(start, end, steps))
    emit, passes = Channel([recorder]), 0
    try:
        while recorder.stopped is None:
            passes, before = passes + 1, len(recorder.losses)
            train_one_epoch(
                model, session.train_batches, optimizer, session.loss_fn, session.cfg.train,
                precision=session.precision, stepped=[recorder], mix=session.mix, emit=emit,
                start=Progress(epoch=passes),  # mixup draws anew in every pass
            )  # fmt: skip
            if len(recorder.losses) == before and recorder.stopped is None:
                raise DltrainError("lr-find: the training split gave no batch to train on")
    except NonFiniteLoss as bad:  # a batch inside an accumulated step, caught at the fold
        if recorder.stopped is None:
            recorder.stop("nan", f"the loss turned NaN/Inf at batch {bad.step} of pass {passes}")
    lrs, smoothed = recorder.lrs[: len(recorder.losses)], recorder.smoothed
    read = window(len(lrs), steps)
    return {
        "seed": session.cfg.seed,
        "steps": len(lrs),
        "stopped": recorder.stopped,  # steps, diverged or nan
        "why": recorder.why,
        "valley": valley(lrs[read], smoothed[read]),
        "steepest": steepest(lrs[read], smoothed[read]),
        "window": [read.start, read.stop],  # the points the rules read: lrs[start:stop]
        "lrs": lrs,
        "losses": recorder.losses,
        "smoothed": smoothed,
    }


def seed_configs(cfg: Config, seeds: int) -> list[Config]:
    """The config on seeds seed, seed+1, …: other batches and initialization, the same
    validation split (data.split_seed pinned), so that only the probe's noise differs.
    Trackers are off: the probe writes only its own two files."""
    data = cfg.data.model_copy(update={"split_seed": cfg.data.split_seed_for(cfg.seed)})
    cfg = trackers.off(cfg)
    return [cfg.model_copy(update={"seed": cfg.seed + k, "data": data}) for k in range(seeds)]


def notes(cfg: Config) -> list[str]:
    """What the probe does differently from the training run the config describes."""
    found = []
    when = {"step": "every epoch", "multistep": "at its milestones", "plateau": "on plateaus"}
    if cfg.schedule.name != "none":
        changes = when.get(cfg.schedule.name, "every step")  # cosine, onecycle
        found.append(
            f"schedule.name: {cfg.schedule.name} changes the learning rate {changes}; the probe "
            "switches it off and sets the rate itself"
        )
    if cfg.train.accumulate > 1:
        found.append(
            f"train.accumulate: {cfg.train.accumulate}: each probe step is one optimizer step "
            f"of {cfg.train.accumulate} mini-batches"
        )
    return found


def summarize(curves: list[dict], cfg: Config, steps: int) -> dict:
    """The suggestions over the seeds: median (on a log scale), range, and the reliability note."""
    summary: dict = {"seeds": len(curves)}
    found = {rule: [c[rule] for c in curves if c[rule] is not None] for rule in RULES}
    for rule, values in found.items():
        summary[rule] = middle(values) if values else None
        summary[f"{rule}_range"] = [min(values), max(values)] if values else None
    summary["unreliable"] = short_note(steps) or spread_note(
        found["valley"], steps, cfg.data.batch_size
    )
    summary["set"] = f"--set optim.lr={summary['valley']:.3g}" if found["valley"] else None
    low, high = LR_RANGE
    for rule in RULES:  # points of a checked ramp: this holds unless a rule has a bug
        if summary[rule] is not None and not low <= summary[rule] <= high:
            raise DltrainError(
                f"lr-find: the {rule} rule gave {summary[rule]:g}, outside {low:g} to {high:g}: "
                "not a learning rate to suggest; nothing was written (please report this)"
            )
    return summary


def new_folder(cfg: Config, out: str | Path | None = None, root: str | Path = "runs") -> Path:
    """`out`, or runs/<name>/lr-find-<time>/ (made unique) beside the config's runs; never
    a folder that holds a training run or another lr-find."""
    from dltrain.reporting.runs import new_run_dir, stamped

    out = stamped(Path(root) / cfg.name, "lr-find-") if out is None else Path(out)
    for name, holds in (("lr_find.json", "an lr-find"), ("config.yaml", "a training run")):
        if (out / name).exists():
            raise DltrainError(f"{out} already holds {holds}; choose another --out")
    return new_run_dir(cfg, out)  # made, and checked writable


def run(
    cfg: Config,
    steps: int = 100,
    start: float = 1e-7,
    end: float = 10.0,
    seeds: int = 1,
    out: str | Path | None = None,
    report: Listener = lambda event: None,
) -> dict:
    """The whole lr-find: `seeds` sweeps, each on a Session built by session.build as
    training builds it (with the lr-find folder as its run folder), then lr_find.json and
    lr_find.png there. Returns what the JSON holds."""
    from dltrain.files import write_json
    from dltrain.reporting.plots import plot_lr_find
    from dltrain.training.session import build

    check_options(steps, start, end, seeds)
    existed = out is not None and Path(out).exists()
    folder = new_folder(cfg, out)
    curves = []
    try:
        for text in notes(cfg):
            report(Note(text))
        for each in seed_configs(cfg, seeds):
            session = build(each, folder)
            if not curves:  # the data's notes (e.g. a dataset's quirks): once
                for text in session.splits.notes:
                    report(Note(text))
            curves.append(probe(session, steps, start, end))
            report(ProbeEnd(curves[-1]))
        summary = summarize(curves, cfg, steps)
    except BaseException:
        if not existed:
            with suppress(OSError):  # only an empty folder goes: nothing was written yet
                folder.rmdir()
        raise
    settings = {"steps": steps, "start": start, "end": end, "beta": BETA, "diverged": DIVERGED}
    result = {"name": cfg.name, "folder": str(folder), **settings, "notes": notes(cfg)}
    result.update(summary=summary, seeds=curves)
    result.update(png=str(folder / "lr_find.png"), config=cfg.model_dump(mode="json"))
    write_json(folder / "lr_find.json", result)
    plot_lr_find(result, folder / "lr_find.png")
    return result
