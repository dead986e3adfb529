"""Early stopping as a table: metric sequence -> stop epoch, best epoch and reason."""

import pytest

from dltrain.config import EarlyStoppingConfig
from dltrain.training.early_stopping import EarlyStopping

NAN = float("nan")

# (config, values per epoch, expected stop epoch or None, expected best epoch)
CASES = [
    ({"monitor": "val_acc", "patience": 2}, [0.5, 0.6, 0.6, 0.59, 0.7], 4, 2),
    ({"monitor": "val_acc", "patience": 3}, [0.5, 0.6, 0.55, 0.61, 0.6, 0.6, 0.6], 7, 4),
    ({"monitor": "val_acc", "patience": 2, "min_delta": 0.05}, [0.5, 0.52, 0.54, 0.6], 3, 1),
    ({"monitor": "val_loss", "patience": 2}, [1.0, 0.8, 0.9, 0.85, 0.7], 4, 2),
    ({"monitor": "val_loss", "patience": 1, "min_delta": 0.1}, [1.0, 0.95, 0.5], 2, 1),
    ({"monitor": "val_loss", "patience": None}, [1.0, 2.0, 3.0, 4.0], None, 1),
    ({"monitor": "val_loss", "mode": "max", "patience": 1}, [1.0, 2.0, 1.5], 3, 2),
    ({"monitor": "val_acc", "patience": 2}, [0.5, NAN, NAN], 3, 1),
]


@pytest.mark.parametrize("options, values, stop, best", CASES)
def test_early_stopping_table(options, values, stop, best):
    stopper = EarlyStopping(EarlyStoppingConfig(**options))
    stopped_at = None
    for epoch, value in enumerate(values, start=1):
        stopper.step(value, epoch)
        if stopper.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == stop
    assert stopper.best_epoch == best


def test_reason_is_one_readable_sentence():
    stopper = EarlyStopping(EarlyStoppingConfig(monitor="val_acc", patience=3, min_delta=0.001))
    for epoch, value in enumerate([0.9, 0.95, 0.981, 0.981, 0.9805, 0.98], start=1):
        stopper.step(value, epoch)
    assert stopper.reason == (
        "stopped at epoch 6: val_acc did not improve by ≥ 0.001 for 3 epochs; best 0.981 at epoch 3"
    )


def test_state_survives_a_round_trip():
    config = EarlyStoppingConfig(monitor="val_loss", patience=3)
    first = EarlyStopping(config)
    for epoch, value in enumerate([1.0, 0.8, 0.9], start=1):
        first.step(value, epoch)
    second = EarlyStopping(config)
    second.load_state_dict(first.state_dict())
    assert second.step(0.85, 4) is False and second.wait == 2
    assert second.step(0.95, 5) is False and second.should_stop
    assert second.best_epoch == 2
