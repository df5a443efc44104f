"""Warm-up then cosine learning-rate schedule, and AdamW parameter groups."""
from __future__ import annotations

import math

import torch


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LambdaLR factor: linear from ~0 to 1 over warm-up, then cosine to 0 at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def parameter_groups(model: torch.nn.Module, lr: float, backbone_lr: float, weight_decay: float) -> list[dict]:
    """Four groups: {pretrained towers, new modules} x {decayed, not decayed}.

    The pretrained group holds the image tower and, when the model uses it, the CLIP text tower (both
    fine-tuned at ``backbone_lr``). Biases, norm weights and embeddings (1-d or named *embedding*/*token*)
    get no weight decay.
    """
    pretrained = list(model.backbone.tower.parameters())
    if getattr(model, "text", None) is not None:
        pretrained += list(model.text.parameters())
    tower = {id(p) for p in pretrained} - getattr(model, "new_lr_parameters", set())
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or "embedding" in name or "token" in name
        groups.setdefault((id(p) in tower, no_decay), []).append(p)
    return [
        {"params": params, "lr": backbone_lr if in_tower else lr, "weight_decay": 0.0 if no_decay else weight_decay,
         "name": f"{'backbone' if in_tower else 'new'}{'-no-decay' if no_decay else ''}"}
        for (in_tower, no_decay), params in sorted(groups.items())
    ]
