"""What a task is: the data it trains on, its loss and its metrics. The trainer and the runner take a
task instead of assuming class labels; methods stay task-agnostic (ST-Adapter serves any task).

A task object answers:

- ``prepare(model, process_index)``: check the model fits the task (and set up per-process state,
  e.g. Mixup's seeded generator) before the first step;
- ``loss(model, batch, unwrapped)``: the training loss of one collated batch (``model`` may be
  DDP-wrapped, ``unwrapped`` is the VideoModel);
- ``batch_size(batch)``: the clips in a batch (for clips/s); ``collate(items)``: the data loaders'
  ``collate_fn`` (the task owns its batch shape);
- ``evaluate(model, loader, accelerator=None)``: the task's metrics over a loader, gathered across
  processes (a dict with ``num_videos`` and ``skipped``);
- ``summary(metrics)``: those metrics in one line; ``primary_metric``: the metric to plot.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class Task(Protocol):
    name: str
    primary_metric: str

    def prepare(self, model, process_index: int = 0) -> None: ...

    def loss(self, model, batch: dict, unwrapped) -> torch.Tensor: ...

    def batch_size(self, batch: dict) -> int: ...

    def collate(self, items: list) -> dict: ...

    def evaluate(self, model, loader, accelerator=None) -> dict: ...

    def summary(self, metrics: dict) -> str: ...


def flatten_metrics(metrics: dict) -> dict:
    """Nested metrics (``{"t2v": {"R@1": ..}}``) as flat keys (``"t2v_R@1"``) for logs and curves."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}_{k}": v for k, v in flatten_metrics(value).items()})
        else:
            flat[key] = value
    return flat


def unwrap(model):
    """The VideoModel inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def model_device(model, accelerator=None) -> torch.device:
    return accelerator.device if accelerator is not None else next(model.parameters()).device


def gather_unique(accelerator: Optional[object], indices: torch.Tensor, *tensors: torch.Tensor):
    """Gather per-process results keyed by dataset index and drop the distributed sampler's repeats:
    returns ``(indices, *tensors)`` sorted by index, each index once. One process: sorted as well."""
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        indices = accelerator.gather(accelerator.pad_across_processes(indices, pad_index=-1))
        tensors = tuple(accelerator.gather(accelerator.pad_across_processes(t, pad_index=-1)) for t in tensors)
        keep = indices >= 0
        indices, tensors = indices[keep], tuple(t[keep] for t in tensors)
    order = torch.argsort(indices, stable=True)
    indices = indices[order]
    first = torch.ones_like(indices, dtype=torch.bool)
    first[1:] = indices[1:] != indices[:-1]
    return (indices[first], *(t[order][first] for t in tensors))


def reduce_sum(accelerator: Optional[object], value: int, device) -> int:
    """An integer count summed over processes."""
    if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
        return int(value)
    return int(accelerator.reduce(torch.tensor(value, device=device), reduction="sum").item())
