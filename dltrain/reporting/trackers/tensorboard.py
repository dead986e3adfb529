"""TensorBoard (logging.tensorboard, extra: tensorboard)."""

from __future__ import annotations

from pathlib import Path

from dltrain.config import Config
from dltrain.errors import MissingExtra
from dltrain.reporting.events import EpochEnd, Event, RunEnd


class TensorBoard:
    """Scalars per epoch and the config as text, in <run>/tensorboard (torch.utils.tensorboard)."""

    def __init__(self, run_dir: Path, cfg: Config):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingExtra(
                "logging.tensorboard: true needs the tensorboard package; install it with "
                "pip install 'dltrain[tensorboard]' (or set logging.tensorboard: false)"
            ) from None
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "```yaml\n" + cfg.to_yaml() + "```")

    def __call__(self, event: Event) -> None:
        if isinstance(event, EpochEnd):
            row = event.row
            for key, value in row.items():
                if key not in ("epoch", "seconds") and value is not None:
                    split, _, metric = key.rpartition("_")  # train_eval_acc -> acc/train_eval
                    name = f"{metric}/{split}" if split else key
                    self.writer.add_scalar(name, value, row["epoch"])
            self.writer.flush()
        elif isinstance(event, RunEnd):
            self.close()

    def close(self) -> None:
        self.writer.close()
