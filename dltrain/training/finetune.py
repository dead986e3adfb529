"""Transfer learning: which parameters train, and the source a finetune run starts from."""

from __future__ import annotations

from torch import nn

from dltrain import files
from dltrain.config import Config, FinetuneConfig
from dltrain.errors import DltrainError
from dltrain.models import facts
from dltrain.models.weights import in_head
from dltrain.training import checkpoint


def _frozen(name: str, head_name: str, freeze) -> bool:
    if freeze == "none":
        return False
    if freeze == "all_but_head":
        return not in_head(name, head_name)
    return any(name == prefix or name.startswith(prefix + ".") for prefix in freeze)


def check_freeze(model: nn.Module, cfg: FinetuneConfig) -> None:
    """Every prefix in a freeze list must name some parameters."""
    if isinstance(cfg.freeze, str):
        return
    names = [name for name, _ in model.named_parameters()]
    for prefix in cfg.freeze:
        if not any(name == prefix or name.startswith(prefix + ".") for name in names):
            top = list(dict.fromkeys(name.split(".")[0] for name in names))
            raise DltrainError(
                f"finetune.freeze: {prefix!r} names no parameters of this model; "
                f"its top-level modules are {', '.join(top)}"
            )


def apply_freeze(model: nn.Module, cfg: FinetuneConfig, epoch: int) -> int:
    """Set requires_grad for `epoch` (everything trains from `unfreeze_at_epoch` on);
    returns how many parameters are frozen."""
    phase_frozen = cfg.unfreeze_at_epoch is None or epoch < cfg.unfreeze_at_epoch
    frozen = 0
    for name, param in model.named_parameters():
        param.requires_grad = not (phase_frozen and _frozen(name, model.head_name, cfg.freeze))
        frozen += 0 if param.requires_grad else param.numel()
    return frozen


def from_source(cfg: Config, source: str) -> tuple[Config, dict]:
    """The config a finetune run trains with, and its parent record.

    `imagenet`: the config's own model with its library's ImageNet weights (the models
    facts.py says have them). A checkpoint: its model architecture, with its weights loaded through
    `model.pretrained` (the head is replaced when the class count differs).
    """
    if source == "imagenet":
        if problem := facts.imagenet_problem(cfg.model.name):
            raise DltrainError(f"finetune --from imagenet: {problem}")
        model = cfg.model.model_copy(update={"pretrained": "imagenet"})
        parent = {"source": "imagenet", "model": cfg.model.name}
    else:
        saved = checkpoint.open_saved(source, purpose="finetune")
        model = saved.cfg.model.model_copy(update={"pretrained": str(saved.path)})
        parent = {
            "source": "checkpoint",
            "checkpoint": str(saved.path),
            "sha256": files.file_sha256(saved.path),
            "epoch": saved.payload["epoch"],
            "name": saved.cfg.name,
            "classes": len(saved.payload["class_names"]),
        }
    return cfg.model_copy(update={"model": model}), parent
