"""The two reference points every temporal method is measured against."""
from __future__ import annotations

from dataclasses import dataclass

from .registry import register_method


@dataclass
class FrozenConfig:
    pass


@register_method(
    "frozen", FrozenConfig, family="baseline", paper="linear probe on mean-pooled frame embeddings",
    help="frozen backbone, mean of frame embeddings, linear head (order-invariant baseline)",
)
def apply_frozen(model, config: FrozenConfig) -> None:
    """Nothing to add: build_model has already frozen the backbone; the head is trained."""


@dataclass
class FullConfig:
    pass


@register_method(
    "full", FullConfig, family="full fine-tuning", paper="full fine-tuning of the image tower (e.g. ViFi-CLIP's visual side)",
    help="the whole image tower fine-tuned, mean of frame embeddings, linear head",
)
def apply_full(model, config: FullConfig) -> None:
    model.backbone.tower.requires_grad_(True)
