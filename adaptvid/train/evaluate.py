"""Evaluation over a (possibly multi-view) dataset, gathered across processes without duplicates."""
from __future__ import annotations

import torch

from .metrics import accuracy_metrics


@torch.no_grad()
def predict_scores(model, loader, accelerator=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(indices, scores, labels, skipped) for every readable video of the loader's dataset.

    Scores are softmax probabilities averaged over views. Under several
    processes, results are gathered and de-duplicated by dataset index (the
    distributed sampler pads the last batch with repeats).
    """
    model.eval()
    indices, scores, labels = [], [], []
    skipped = 0
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    for batch in loader:
        skipped += batch["skipped"]
        if batch["video"] is None:
            continue
        video = batch["video"].to(device)
        if video.ndim == 6:
            s = _views(model, video)
        else:
            s = model(video).float().softmax(dim=-1)
        indices.append(batch["index"].to(device))
        scores.append(s.float())
        labels.append(batch["label"].to(device))
    num_classes = _unwrap(model).num_classes
    idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    sc = torch.cat(scores) if scores else torch.zeros(0, num_classes, device=device)
    lb = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    if accelerator is not None and accelerator.num_processes > 1:
        idx = accelerator.gather(accelerator.pad_across_processes(idx, pad_index=-1))
        sc = accelerator.gather(accelerator.pad_across_processes(sc))
        lb = accelerator.gather(accelerator.pad_across_processes(lb, pad_index=-1))
        skipped = int(accelerator.reduce(torch.tensor(skipped, device=device), reduction="sum").item())
        keep = idx >= 0
        idx, sc, lb = idx[keep], sc[keep], lb[keep]
        idx, first = _first_occurrence(idx)
        sc, lb = sc[first], lb[first]
    return idx.cpu(), sc.cpu(), lb.cpu(), skipped


def _views(model, video: torch.Tensor) -> torch.Tensor:
    # Same as VideoModel.forward_views, but callable on a DDP-wrapped model.
    b, v = video.shape[:2]
    logits = model(video.flatten(0, 1)).float()
    return logits.softmax(dim=-1).reshape(b, v, -1).mean(dim=1)


def _first_occurrence(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(idx, stable=True)
    sorted_idx = idx[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return sorted_idx[first], order[first]


def _unwrap(model):
    return getattr(model, "module", model)


def evaluate(model, loader, accelerator=None) -> dict:
    """top1 / top5 / mean-class accuracy (percent), num_videos and skipped count."""
    _, scores, labels, skipped = predict_scores(model, loader, accelerator)
    result = accuracy_metrics(scores, labels, _unwrap(model).num_classes)
    result["skipped"] = skipped
    return result
