"""Whether two run folders hold the same run: what a resumed run is checked against."""

import json
from pathlib import Path

import pytest
import torch

from dltrain.reporting.runs import read_metrics

ROW_KEYS = ("train_loss", "val_loss", "val_acc", "val_acc_ema", "val_acc_raw", "lr")
SUMMARY_KEYS = ("status", "best_epoch", "epochs_run", "restored_best", "best_weights")


def assert_same_run(a: Path, b: Path) -> None:
    """The same rows in metrics.csv; the same epoch and weights in last.pt and best.pt (with an
    EMA: the average, the trained weights and the choice too); the same summary."""
    rows_a, rows_b = read_metrics(a), read_metrics(b)
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b]
    for x, y in zip(rows_a, rows_b, strict=True):
        for key in (key for key in ROW_KEYS if key in x):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["epoch"], key)
    for name in ("last.pt", "best.pt"):
        wa, wb = (torch.load(folder / name, weights_only=True) for folder in (a, b))
        assert wa["epoch"] == wb["epoch"], name
        states = [(wa["model"], wb["model"])]
        if wa.get("ema"):
            assert wa["ema"]["weights"] == wb["ema"]["weights"], name
            states += [(wa["ema"][part], wb["ema"][part]) for part in ("average", "trained")]
        for mine, theirs in states:
            for key, value in mine.items():
                torch.testing.assert_close(value, theirs[key], rtol=0, atol=1e-6)
    sa, sb = (json.loads((folder / "summary.json").read_text()) for folder in (a, b))
    for key in SUMMARY_KEYS:
        assert sa.get(key) == sb.get(key), key
    assert sa["final_val"]["acc"] == pytest.approx(sb["final_val"]["acc"], abs=1e-6)


def write_config(folder: Path, text: str, name: str) -> Path:
    """A config file in <folder>/configs/ (not a run folder: `dltrain runs` passes it by)."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    path = folder / "configs" / name
    path.write_text(text)
    return path
