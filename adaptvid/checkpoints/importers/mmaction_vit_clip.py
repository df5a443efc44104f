"""What the importers of mmaction2-based repositories share (AIM's ``ViT_CLIP``, ZeroI2V's ``ViT_Zero_CLIP``):
both save a CLIP image tower with a ``temporal_embedding`` under ``backbone.`` (or bare) and an ``I3DHead``
(``cls_head.fc_cls``), both use the same ``Adapter`` module (``D_fc1`` down, ``D_fc2`` up) and size it by a
ratio of the width that it truncates with ``int(width * ratio)``."""
from __future__ import annotations

import re

from .base import CheckpointImportError

HEAD = ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias")   # mmaction's I3DHead
_LINEAR = {"1": "down", "2": "up"}


def backbone_prefix(state: dict, fmt: str, model_class: str) -> str:
    """``"backbone."`` (mmaction's Recognizer3D) or ``""`` (a bare backbone state dict)."""
    for prefix in ("backbone.", ""):
        if f"{prefix}conv1.weight" in state and f"{prefix}temporal_embedding" in state:
            return prefix
    raise CheckpointImportError(
        f"{fmt}: no {model_class} backbone found (expected 'backbone.conv1.weight' and 'backbone.temporal_embedding', "
        f"as mmaction saves {model_class}); check --format")


def recognizer_parts(state: dict, fmt: str, model_class: str) -> tuple[str, dict]:
    """``(prefix, backbone tensors without it)`` of an mmaction recognizer's state dict, whose ``I3DHead``
    must be there too."""
    prefix = backbone_prefix(state, fmt, model_class)
    missing_head = [k for k in HEAD if k not in state]
    if missing_head:
        raise CheckpointImportError(f"{fmt}: no classification head {missing_head} (mmaction's I3DHead 'cls_head.fc_cls')")
    return prefix, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def adapter_ratio(hidden: int, width: int) -> float:
    """A ratio with ``int(width * ratio) == hidden`` (the methods' own rounding, as the official Adapter's)."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def map_adapters(backbone: dict, targets: dict[str, str]) -> tuple[dict, set, dict]:
    """The official ``Adapter`` tensors of the adapters named in ``targets``
    (``transformer.resblocks.i.<Name>.D_fc{1,2}.{weight,bias}``) under adaptvid's names
    (``backbone.slots.i.<targets[Name]>.{down,up}.{weight,bias}``). Returns the tensors, the official keys
    they came from, and the hidden width of each adapter name found."""
    names = "|".join(re.escape(name) for name in targets)
    pattern = re.compile(rf"^transformer\.resblocks\.(\d+)\.({names})\.D_fc([12])\.(weight|bias)$")
    tensors, used, hidden = {}, set(), {}
    for key, value in backbone.items():
        match = pattern.match(key)
        if match is None:
            continue
        block, adapter, fc, kind = match.groups()
        tensors[f"backbone.slots.{block}.{targets[adapter]}.{_LINEAR[fc]}.{kind}"] = value
        used.add(key)
        if fc == "1" and kind == "weight":
            hidden[adapter] = value.shape[0]
    return tensors, used, hidden
