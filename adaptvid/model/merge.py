"""Fold mergeable methods (linear adapters, LoRA) into the frozen weights for deployment.

After ``merge(model)`` the merged methods' modules are gone and the tower's
weights carry their effect: the model has the plain backbone's parameter
count and inference cost. A merged model is saved with its whole tower
(the frozen weights changed), and ``load_model`` rebuilds it merged.
"""
from __future__ import annotations

from ..methods.registry import get_method


def mergeable(model) -> list[str]:
    """Names of the model's methods that can be merged."""
    return [name for name, _ in model.methods if get_method(name).merge is not None and name not in merged(model)]


def merged(model) -> list[str]:
    return list(getattr(model, "merged_methods", []))


def merge(model):
    """Merge every mergeable method of ``model`` in place and return it; others stay as they are."""
    names = mergeable(model)
    if not names:
        have = ", ".join(name for name, _ in model.methods) or "none"
        raise ValueError(f"none of the model's methods ({have}) can be merged into the backbone weights")
    for name, config in model.methods:
        if name in names:
            get_method(name).merge(model, config)
    model.merged_methods = merged(model) + names
    return model
