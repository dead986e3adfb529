"""Models: facts.py (what each name means; torch-free), course.py (the course's four), zoo.py
(torchvision's and timm's classifiers), weights.py (heads and loading weights), build.py
(`build_model`), measure.py (parameters, MACs, `dltrain summary`'s figures) and catalog.py
(writes zoo.json, the zoos' facts).

Nothing is imported here: config checking reads `dltrain.models.facts` without importing
torch, and this package's __init__ runs first. The names below load their module when used.
"""

from importlib import import_module

_WHERE = {
    "MODELS": "build",
    "build_model": "build",
    "memory_for": "build",
    "count_parameters": "measure",
    "count_macs": "measure",
    "layer_summary": "measure",
    "replace_head": "weights",
    "needs_rgb": "facts",
    "model_input": "facts",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
