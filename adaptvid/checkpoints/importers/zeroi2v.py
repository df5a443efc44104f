"""Import the official ZeroI2V checkpoints (leexinhao/ZeroI2V, mmaction2-based) as ``zeroi2v`` models.

mmaction's ``Recognizer3D`` saves ``{'meta', 'state_dict': {'backbone.*', 'cls_head.fc_cls.*'}, 'optimizer', ...}``
with the whole backbone (``ViT_Zero_CLIP`` in ``mmaction/models/backbones/vit_zero_clip.py``, the frozen CLIP
image tower included, its ``proj`` deleted), so this is a full-form import. Two forms are read:

* **training form** (adapters unmerged): ``backbone.transformer.resblocks.i.{T_Adapter_in, S_Adapter,
  MLP_Adapter, MLP_Adapter_out}.D_fc{1,2}`` next to the CLIP block weights;
* **reparameterised form** (``tools/weight_reparam.py``, the checkpoints the README lists as "Checkpoint",
  run by ``ViT_Zero_CLIP_eval``): no adapter keys, the adapters folded into ``attn.in_proj_*``,
  ``attn.out_proj``, ``mlp.c_fc`` and ``mlp.c_proj``. The tower takes the merged weights and every
  adapter is the identity (both linears zero), so the model computes what ``ViT_Zero_CLIP_eval`` does;
  ``adaptvid.merge(model)`` then drops the adapters exactly (folding the identity changes no weight),
  leaving the plain tower plus the K/V shift and the temporal embedding.

=============================================================  ===========================================================
official (``backbone.`` prefix)                                 adaptvid
=============================================================  ===========================================================
``conv1``, ``class_embedding``, ``positional_embedding``,       the CLIP image tower (OpenAI-CLIP layout, ``visual.*``)
``ln_pre``, ``transformer.resblocks.i.{attn,ln_1,mlp,ln_2}``,
``ln_post``
``transformer.resblocks.i.T_Adapter_in.D_fc1`` / ``D_fc2``      ``backbone.slots.i.attention.zeroi2v.t_adapter.down`` / ``up``
``transformer.resblocks.i.S_Adapter``                           ``backbone.slots.i.attention.zeroi2v.s_adapter``
``transformer.resblocks.i.MLP_Adapter``                         ``backbone.slots.i.mlp_in.zeroi2v``
``transformer.resblocks.i.MLP_Adapter_out``                     ``backbone.slots.i.mlp_out.zeroi2v``
``temporal_embedding``                                          ``backbone.before_pre_norm.zeroi2v.temporal_embedding``
``cls_head.fc_cls``                                             ``head``
=============================================================  ===========================================================

Not in the tensors, so options with the official configs' values as defaults: ``adapter_scale`` (0.5),
``shift_div`` (12), ``heads`` (width // 64). A model trained with ``num_tadapter=1`` (no ``MLP_Adapter_out``)
gets an identity adapter after the MLP (``up`` zero), which computes exactly what the official block does.
"""
from __future__ import annotations


import torch

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .mmaction_vit_clip import HEAD, adapter_ratio, map_adapters, recognizer_parts
from .openai_clip import split_openai_clip

NAME = "zeroi2v"
_TARGET = {"T_Adapter_in": "attention.zeroi2v.t_adapter", "S_Adapter": "attention.zeroi2v.s_adapter",
           "MLP_Adapter": "mlp_in.zeroi2v", "MLP_Adapter_out": "mlp_out.zeroi2v"}


def _identity_adapter(name: str, width: int, hidden: int) -> dict:
    """An adapter that computes the identity (``x + s * up(down(x))`` with both linears zero)."""
    return {f"{name}.down.weight": torch.zeros(hidden, width), f"{name}.down.bias": torch.zeros(hidden),
            f"{name}.up.weight": torch.zeros(width, hidden), f"{name}.up.bias": torch.zeros(width)}


def _adapters(backbone: dict, width: int, depth: int) -> tuple[dict, set, int]:
    """adaptvid adapter tensors, the official keys they came from, and the adapter width.

    The reparameterised form has no adapters: every adapter is the identity (the tower holds their effect);
    a model trained with ``num_tadapter=1`` has no ``MLP_Adapter_out``: that one is the identity."""
    out, used, widths = map_adapters(backbone, _TARGET)
    hidden = next(iter(widths.values()), None)   # one bottleneck width for every adapter
    size = hidden if hidden is not None else max(1, int(width * 0.25))
    for block in range(depth):
        for adapter, target in _TARGET.items():
            if f"transformer.resblocks.{block}.{adapter}.D_fc1.weight" not in backbone:
                out.update(_identity_adapter(f"backbone.slots.{block}.{target}", width, size))
    return out, used, hidden


def _heads(options: dict) -> dict:
    """Head counts are not in the tensors: pass the user's override on (default width // 64)."""
    return {"heads": options["heads"]} if "heads" in options else {}


def convert(state: dict, options: dict) -> Conversion:
    prefix, backbone = recognizer_parts(state, NAME, "ViT_Zero_CLIP")
    width = backbone["conv1.weight"].shape[0]
    depth = len({k.split(".")[2] for k in backbone if k.startswith("transformer.resblocks.")})
    adapters, adapter_keys, hidden = _adapters(backbone, width, depth)
    tower_keys = [k for k in backbone if k not in adapter_keys and k != "temporal_embedding"]
    # The ViT_Zero_CLIP tower in OpenAI-CLIP names; ZeroI2V deletes the CLIP projection (unused: readout is ln_post).
    tower_state = {f"visual.{k}": backbone[k] for k in tower_keys}
    tower_state.setdefault("visual.proj", torch.eye(width))   # an identity filler keeps the tower loadable
    tower, rest = split_openai_clip(tower_state, **_heads(options))
    if tower is None or rest:
        raise CheckpointImportError(f"zeroi2v: unexpected backbone keys {sorted(rest)[:10]}")
    temporal = backbone["temporal_embedding"]
    method_options = {"adapter_scale": float(options.get("adapter_scale", 0.5)),
                      "shift_div": int(options.get("shift_div", 12))}
    if hidden is not None:
        method_options["bottleneck_ratio"] = adapter_ratio(hidden, width)
    tensors = dict(adapters)
    tensors["backbone.before_pre_norm.zeroi2v.temporal_embedding"] = temporal
    tensors["head.weight"], tensors["head.bias"] = state[HEAD[0]], state[HEAD[1]]
    consumed = {prefix + k for k in backbone} | set(HEAD)
    return Conversion(method=NAME, options=method_options, tensors=tensors, num_classes=state[HEAD[0]].shape[0],
                      num_frames=temporal.shape[1], tower=tower, consumed=consumed)


register_format(ImportFormat(
    name=NAME,
    help="mmaction checkpoint of ViT_Zero_CLIP + I3DHead: training form (adapters) or reparameterised (merged) form",
    releases=(),
    convert=convert,
    source="https://github.com/leexinhao/ZeroI2V",
))
