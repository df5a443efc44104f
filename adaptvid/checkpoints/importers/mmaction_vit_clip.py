"""What the importers of mmaction2-based repositories share (AIM's ``ViT_CLIP``, ZeroI2V's ``ViT_Zero_CLIP``):
both save a CLIP image tower with a ``temporal_embedding`` under ``backbone.`` (or bare), and both size their
adapters by a ratio of the width that the official ``Adapter`` truncates with ``int(width * ratio)``."""
from __future__ import annotations

from .base import CheckpointImportError


def backbone_prefix(state: dict, fmt: str, model_class: str) -> str:
    """``"backbone."`` (mmaction's Recognizer3D) or ``""`` (a bare backbone state dict)."""
    for prefix in ("backbone.", ""):
        if f"{prefix}conv1.weight" in state and f"{prefix}temporal_embedding" in state:
            return prefix
    raise CheckpointImportError(
        f"{fmt}: no {model_class} backbone found (expected 'backbone.conv1.weight' and 'backbone.temporal_embedding', "
        f"as mmaction saves {model_class}); check --format")


def adapter_ratio(hidden: int, width: int) -> float:
    """A ratio with ``int(width * ratio) == hidden`` (the methods' own rounding, as the official Adapter's)."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width
