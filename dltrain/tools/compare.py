"""`dltrain compare`: several configs, several seeds each, on one validation split."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from dltrain.config import Config
from dltrain.errors import DltrainError
from dltrain.files import write_json
from dltrain.reporting.events import Summary


def labels_for(paths: list[Path]) -> list[str]:
    """Config file stems, made unique."""
    labels: list[str] = []
    for path in paths:
        label, n = path.stem, 2
        while label in labels:
            label, n = f"{path.stem}-{n}", n + 1
        labels.append(label)
    return labels


def compare(
    configs: dict[str, Config],
    seeds: int,
    root: Path,
    on_run: Callable[[str, int, Summary], None] = lambda label, seed, summary: None,
) -> dict:
    """Train every config with `seeds` seeds on one validation split (that of the first
    config's seed); returns per-config statistics and writes compare.json and compare.png.
    A comparison is fair only on the same data and split: configs that differ there fail."""
    from dltrain.reporting.plots import plot_compare
    from dltrain.training.engine import fit

    if seeds < 1:
        raise DltrainError(f"--seeds must be at least 1 (got {seeds})")
    first_label, first = next(iter(configs.items()))
    for label, cfg in configs.items():
        for key in ("dataset", "root", "val_split", "resize"):
            ours, theirs = getattr(cfg.data, key), getattr(first.data, key)
            if ours != theirs:
                raise DltrainError(
                    f"compare needs the same data for every config: {label} has data.{key}="
                    f"{ours!r}, {first_label} has {theirs!r}"
                )
    if (root / "compare.json").exists():
        raise DltrainError(f"{root} already holds a comparison; choose another --out")
    split_seed = first.data.split_seed_for(first.seed)
    folders: dict[str, list[Path]] = {}
    rows = []
    for label, cfg in configs.items():
        folders[label], summaries = [], []
        for seed in range(cfg.seed, cfg.seed + seeds):
            data = cfg.data.model_copy(update={"split_seed": split_seed})
            folder = root / label / f"seed-{seed}"
            summaries.append(fit(cfg.model_copy(update={"seed": seed, "data": data}), folder))
            folders[label].append(folder)
            on_run(label, seed, summaries[-1])
        rows.append(_stats(label, cfg, summaries))
    result = {"root": str(root), "split_seed": split_seed, "seeds": seeds, "configs": rows}
    result["png"] = str(plot_compare(folders, root / "compare.png"))
    write_json(root / "compare.json", result)
    return result


def _stats(label: str, cfg: Config, summaries: list[dict]) -> dict:
    accs = [s.best_metrics["val_acc"] for s in summaries]
    return {
        "config": label,
        "model": cfg.model.name,
        "params": summaries[0].facts.params,
        "val_acc_mean": statistics.fmean(accs),
        "val_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "val_accs": accs,
        "seconds_per_epoch": statistics.fmean(s.seconds_per_epoch for s in summaries),
        "epochs": [s.epochs_run for s in summaries],
    }


def default_root(runs: Path = Path("runs")) -> Path:
    from dltrain.reporting.runs import stamped

    return stamped(runs, "compare-")
