"""zoo.json: the zoos' rows of the model-facts table (facts.py), from the installed torchvision
and timm. Regenerate after upgrading either library (tests/test_zoo.py says when):

    .venv/bin/python -m dltrain.models.catalog --out dltrain/models/zoo.json

Each row comes from the library's own metadata (weights, their preprocessing, torchvision's
parameter counts, timm's fixed input sizes) and from the model built on the meta device,
which allocates nothing: timm's parameter count, and torchvision's smallest input (a search
over forward passes). timm's smallest inputs are not searched ahead: ten forward passes for
each of its ~1,400 models took over an hour on a 2-core machine; where a timm model cannot
take the data's size, the build's dry forward searches then (zoo.check_input). Writing the
file takes a few minutes; reading it, milliseconds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from dltrain.models.names import COURSE_NAMES, TIMM

# What a row holds that needs the model built (on the meta device); the rest is metadata.
MEASURED = {"torchvision": ("min_size", "fixed"), "timm": ("params",)}
# timm's default weights that count as ImageNet weights: a 1,000-class head, or a tag naming
# ImageNet-12k/21k/22k (whose heads have other sizes). CLIP, DINO and the like do not.
_IMAGENET_TAG = re.compile(r"in(12|21|22)k")


def torchvision_names() -> list[str]:
    """torchvision's classifiers but the course's alexnet and resnet18, which are dltrain's
    (the same layers, plus a small-input stem)."""
    import torchvision

    found = torchvision.models.list_models(module=torchvision.models)
    return [name for name in found if name not in COURSE_NAMES]


def timm_names() -> list[str]:
    import timm

    return [TIMM + name for name in timm.list_models()]


def torchvision_row(name: str, measure: bool = True) -> dict:
    import torchvision
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    preprocess = weights.transforms()
    imagenet = len(weights.meta["categories"]) == 1000
    row = {
        "source": "torchvision",
        "params": weights.meta["num_params"],
        "weights": weights.name if imagenet else None,
        "size": preprocess.crop_size[0],
        "resize": preprocess.resize_size[0],
        "interpolation": preprocess.interpolation.value,
        "stats": [list(preprocess.mean), list(preprocess.std)],
    }
    if measure:
        row.update(input_sizes(on_meta(lambda: torchvision.models.get_model(name)), row["size"]))
    return row


def timm_row(name: str, measure: bool = True) -> dict:
    import timm

    arch = name.removeprefix(TIMM)
    cfg = timm.get_pretrained_cfg(arch)
    has_weights = bool(cfg.hf_hub_id or cfg.url or cfg.file)
    imagenet = has_weights and (cfg.num_classes == 1000 or _IMAGENET_TAG.search(cfg.tag or ""))
    row = {
        "source": "timm",
        "params": None,
        "weights": (cfg.tag or "default") if imagenet else None,
        "size": cfg.input_size[-1],
        "crop_pct": cfg.crop_pct,
        "interpolation": cfg.interpolation,
        "stats": [list(cfg.mean), list(cfg.std)],
    }
    fixed = bool(cfg.fixed_input_size)
    row.update(min_size=row["size"] if fixed else None, fixed=fixed)
    if measure:
        model = on_meta(lambda: timm.create_model(arch))  # None: left unknown
        row["params"] = sum(p.numel() for p in model.parameters()) if model else None
    return row


def on_meta(build: Callable):
    """The model `build` makes, on the meta device: built there, or (a model whose __init__
    reads tensor values, as RegNet's does) built on the CPU and moved; None if neither works."""
    import torch

    try:
        with torch.device("meta"):
            return build()
    except Exception:  # noqa: BLE001
        pass
    try:
        return build().to("meta")
    except Exception:  # noqa: BLE001
        return None


def input_sizes(model, size: int, channels: int = 3) -> dict:
    """The smallest square input one forward pass takes, found on the meta device (shapes
    only, no memory or arithmetic): {"min_size", "fixed"}. A model that takes neither half its
    default size nor 32 px more is fixed to it (a ViT's patch grid). The search assumes that a
    size above one that works also works; the builders try the data's own size anyway."""
    import torch

    if model is None:
        return {"min_size": None, "fixed": False}
    model.eval()

    def works(side: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.empty(1, channels, side, side, device="meta"))
        except Exception:  # noqa: BLE001 - any failure means this size is not taken
            return False
        return True

    if not works(size):
        return {"min_size": None, "fixed": False}  # the meta device cannot tell
    if not (works(size // 2) or works(size + 32)):
        return {"min_size": size, "fixed": True}
    low, high = 1, size
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if works(middle) else (middle + 1, high)
    return {"min_size": low, "fixed": False}


def row(name: str, measure: bool = True) -> dict:
    return (timm_row if name.startswith(TIMM) else torchvision_row)(name, measure)


def live_row(name: str) -> dict | None:
    """The row of a name the installed library has, without building the model; None if it
    has no such model (or is not installed)."""
    try:
        if name.startswith(TIMM):
            import timm

            return timm_row(name, measure=False) if timm.is_model(name[len(TIMM) :]) else None
        return torchvision_row(name, measure=False) if name in torchvision_names() else None
    except ImportError:
        return None


def versions() -> dict:
    import timm
    import torchvision

    return {"torchvision": torchvision.__version__.split("+")[0], "timm": timm.__version__}


def _stats_key(pair: list, keys: dict) -> str:
    known = {0.485: "imagenet", 0.5: "inception", 0.48145466: "clip"}
    key = json.dumps(pair)
    if key not in keys:
        name = known.get(pair[0][0])
        keys[key] = name if name and name not in keys.values() else f"stats{len(keys)}"
    return keys[key]


def generate(names: list[str], progress=None) -> dict:
    """The file's content; rows share their mean/std through the "stats" keys."""
    models, keys = {}, {}
    for index, name in enumerate(names):
        if progress:
            progress(index, len(names), name)
        models[name] = row(name)
        models[name]["stats"] = _stats_key(models[name]["stats"], keys)
    stats = {key: json.loads(pair) for pair, key in keys.items()}
    return {"versions": versions(), "stats": stats, "models": models}


def dump(content: dict) -> str:
    """JSON with one model per line: a regenerated file's diff shows what changed."""
    lines = ["{"]
    for part in ("versions", "stats"):
        lines.append(f'"{part}": {json.dumps(content[part])},')
    lines.append('"models": {')
    rows = [f"{json.dumps(name)}: {json.dumps(row)}" for name, row in content["models"].items()]
    lines.append(",\n".join(rows))
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the file to write")
    parser.add_argument("--only", help="a glob: write only these names (a quick look)")
    args = parser.parse_args()
    import fnmatch

    names = torchvision_names() + timm_names()
    names = [name for name in names if fnmatch.fnmatchcase(name, args.only or "*")]

    def progress(index: int, total: int, name: str) -> None:
        print(f"{index + 1}/{total} {name}", file=sys.stderr, flush=True)

    args.out.write_text(dump(generate(names, progress)), encoding="utf-8")


if __name__ == "__main__":
    main()
