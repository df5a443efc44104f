"""Import the official AIM checkpoints (taoyang1122/adapt-image-models, mmaction2-based) as ``aim`` models.

mmaction's ``Recognizer3D`` saves ``{'meta', 'state_dict': {'backbone.*', 'cls_head.fc_cls.*'}, 'optimizer', ...}``
with the whole model: the backbone ``ViT_CLIP`` (``mmaction/models/backbones/vit_clip.py``; the frozen CLIP
image tower without its ``proj``, the adapters, the temporal embedding) and the ``I3DHead``
(``cls_head.fc_cls``: average over time and space, dropout 0.5, linear). So this is a **full-form** import:
the tower's shape is read from the tensors, and no backbone is needed.

===============================================================  ==========================================================
official (``backbone.`` prefix)                                   adaptvid
===============================================================  ==========================================================
``conv1``, ``class_embedding``, ``positional_embedding``,         the CLIP image tower (OpenAI-CLIP layout, ``visual.*``)
``ln_pre``, ``transformer.resblocks.i.{attn,ln_1,mlp,ln_2}``,
``ln_post`` (trained by AIM)
``transformer.resblocks.i.T_Adapter.D_fc1`` / ``D_fc2``           ``backbone.slots.i.before_attn.aim_temporal.adapter.down`` / ``up``
``transformer.resblocks.i.T_Adapter_in``                          ``backbone.slots.i.before_attn.aim_temporal.adapter_in``
``transformer.resblocks.i.S_Adapter``                             ``backbone.slots.i.attn_branch.aim_spatial.adapter``
``transformer.resblocks.i.MLP_Adapter``                           ``backbone.slots.i.mlp_parallel.aim_mlp.adapter``
``temporal_embedding`` (1, T, D)                                  ``backbone.before_pre_norm.aim.temporal_embedding``
``cls_head.fc_cls``                                               ``head``
===============================================================  ==========================================================

Read from the tensors: the adapter ratio (``D_fc1`` rows / width), ``num_tadapter`` (2 when ``T_Adapter_in`` is
there), the number of frames (the temporal embedding's). Not in the tensors, so options: ``scale``, the MLP
adapter's ``adapter_scale`` (default 0.5, the K400 / K700 / Diving-48 configs of every released checkpoint; 1.0
for a ``num_tadapter=2`` checkpoint, the only such config being the ViT-B SSv2 one; the ViT-L SSv2 config has
one temporal adapter and scale 1: pass ``scale=1``), and ``heads`` (width // 64, as in both official towers).

The AIM repository's best-known bug report (issue #25: SSv2 top-1 of 30-40 %) was a model trained without
``model.backbone.pretrained=openaiclip``: ``ViT_CLIP.init_weights`` then silently skips the CLIP weights (and it
loads them with ``strict=False``, logging the mismatches only). Here every key is strict: a checkpoint missing
a tower or adapter tensor, or holding one the model does not have, is an error that names it.
"""
from __future__ import annotations

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .mmaction_vit_clip import HEAD, adapter_ratio, map_adapters, recognizer_parts
from .openai_clip import split_openai_clip

NAME = "aim"
_TARGET = {"T_Adapter": "before_attn.aim_temporal.adapter", "T_Adapter_in": "before_attn.aim_temporal.adapter_in",
           "S_Adapter": "attn_branch.aim_spatial.adapter", "MLP_Adapter": "mlp_parallel.aim_mlp.adapter"}


def convert(state: dict, options: dict) -> Conversion:
    prefix, backbone = recognizer_parts(state, NAME, "ViT_CLIP")
    adapters, adapter_keys, kinds = map_adapters(backbone, _TARGET)
    if "T_Adapter" not in kinds:
        raise CheckpointImportError("aim: no AIM adapters ('transformer.resblocks.i.T_Adapter.D_fc1.weight', ...); "
                                    "is this an adapt-image-models ViT_CLIP checkpoint? check --format")
    width = backbone["conv1.weight"].shape[0]
    hidden = backbone["transformer.resblocks.0.T_Adapter.D_fc1.weight"].shape[0]
    num_tadapter = 2 if "T_Adapter_in" in kinds else 1
    tower_state = {f"visual.{k}": v for k, v in backbone.items() if k not in adapter_keys and k != "temporal_embedding"}
    tower, rest = split_openai_clip(tower_state, **({"heads": options["heads"]} if "heads" in options else {}))
    temporal = backbone["temporal_embedding"]
    method_options = {"ratio": adapter_ratio(hidden, width), "num_tadapter": num_tadapter,
                      "scale": float(options.get("scale", 1.0 if num_tadapter == 2 else 0.5))}
    tensors = dict(adapters)
    tensors["backbone.before_pre_norm.aim.temporal_embedding"] = temporal
    tensors["head.weight"], tensors["head.bias"] = state[HEAD[0]], state[HEAD[1]]
    # keys left in `rest` are not consumed: import_checkpoint names them as unexpected
    consumed = ({prefix + k[len("visual."):] for k in tower.tensors} | {prefix + k for k in adapter_keys}
                | {prefix + "temporal_embedding"} | set(HEAD))
    return Conversion(method=NAME, options=method_options, tensors=tensors, num_classes=state[HEAD[0]].shape[0],
                      num_frames=temporal.shape[1], tower=tower, consumed=consumed)


register_format(ImportFormat(
    name=NAME,
    help="mmaction checkpoint of AIM's ViT_CLIP + I3DHead ({'state_dict': {'backbone.*', 'cls_head.fc_cls.*'}}), "
         "the whole model (Python option scale=: adapter_scale, default 0.5, 1.0 with two temporal adapters)",
    releases=("K400 ViT-B/16 8/16/32 frames and ViT-L/14 8/16/32 frames, K700 ViT-B/16, Diving-48 ViT-B/16 "
              "(the README's Google Drive 'checkpoint' links, e.g. vit_b_clip_8frame_k400.pth)",),
    convert=convert,
    source="https://github.com/taoyang1122/adapt-image-models",
))
