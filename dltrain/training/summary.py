"""How a run's `Summary` is made: the setup's facts, and how the run ended: its best epoch,
the weights handed over (restored best or last, EMA or trained, measured once more on
validation), and why it stopped."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from dltrain import __version__
from dltrain.models import count_parameters
from dltrain.reporting.events import Facts, Summary
from dltrain.training.epoch import Stop, evaluate
from dltrain.training.loop import LoopState
from dltrain.training.session import class_counts

if TYPE_CHECKING:
    from dltrain.training.session import Session


def run_facts(run: Session) -> Facts:
    """What the start line and the summary say about the run's setup."""
    return Facts(
        params=count_parameters(run.model),
        macs=run.macs,
        device=str(run.device),
        processes=run.world_size,
        precision=run.precision.name,
        sizes=run.splits.sizes,
        input=[run.info.channels, *run.info.image_size],
        input_from=run.input_from,
        class_counts=class_counts(run.splits),
    )


def picked(row: dict) -> str | None:
    """Which weights an epoch's val_loss and val_acc are of: "ema", "trained", or None (a run
    without an EMA). Read off the row itself (the figures are copies), so metrics.csv holds
    the fact once; when both validated the same, the EMA is the one taken."""
    if "val_acc_ema" not in row:
        return None
    same = row["val_loss"] == row["val_loss_ema"] and row["val_acc"] == row["val_acc_ema"]
    return "ema" if same else "trained"


def unfinished(run: Session, loop: LoopState, status: str, reason: str, seconds: float) -> Summary:
    """The summary of a run that did not finish."""
    best = run.stopper.best_epoch
    return Summary(
        name=run.cfg.name,
        status=status,
        stop_reason=reason,
        epochs_run=len(loop.rows),
        monitor=run.stopper.monitor,
        best_epoch=best,
        best_value=run.stopper.best,
        best_metrics=next((row for row in loop.rows if row["epoch"] == best), None),
        facts=run_facts(run),
        seconds=seconds,
        parent=run.parent,
        version=__version__,
    )


def finished(run: Session, loop: LoopState, stop: Stop | None, seconds: float) -> Summary:
    """The summary of a run that ended: all its epochs, early stopping, or a caller's stop."""
    summary = unfinished(run, loop, "finished", "", seconds)
    best_row, restored, handed = summary.best_metrics, False, loop.weights
    if run.cfg.train.early_stopping.restore_best and loop.best_weights is not None:
        run.model.load_state_dict(loop.best_weights)
        restored = run.stopper.best_epoch != loop.rows[-1]["epoch"]
        handed = picked(best_row)
    elif loop.weights == "ema":  # the last epoch's better weights: the average
        run.model.load_state_dict(run.ema.module.state_dict())
    # The model training hands over (restored or last), measured once more on validation.
    final = evaluate(run.eval_net, run.val_batches, autocast=run.precision.autocast)
    reason = run.stopper.reason + (" (restored)" if run.stopper.reason and restored else "")
    status = "stopped_early" if run.stopper.should_stop else "finished"
    if stop is not None:
        status, reason = "stopped", stop.reason
    return dataclasses.replace(
        summary,
        status=status,
        stop_reason=reason,
        restored_best=restored,
        ema_decay=run.ema.decay if run.ema is not None else None,
        best_weights=picked(best_row) if best_row else None,
        final_weights=handed,
        overfitting=loop.overfitting or None,  # the note, if training gave it
        final_val={"loss": final["loss"], "acc": final["acc"]},
        trainable_params=sum(p.numel() for p in run.model.parameters() if p.requires_grad),
        seconds_per_epoch=sum(r["seconds"] for r in loop.rows) / max(1, len(loop.rows)),
    )
