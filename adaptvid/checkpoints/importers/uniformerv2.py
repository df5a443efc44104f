"""Import the official UniFormerV2 checkpoints (OpenGVLab/UniFormerV2, ``MODEL_ZOO.md``) as ``uniformerv2`` models.

The released ``*.pyth`` files are PySlowFast checkpoints (``slowfast/utils/checkpoint.py``:
``{'epoch', 'model_state', 'optimizer_state', 'cfg'}``) of ``slowfast/models/uniformerv2.py:Uniformerv2``,
whose ``backbone`` is ``uniformerv2_model.py:VisionTransformer``: the whole network, the fine-tuned CLIP
image tower included, so this is a full-form import. Keys (prefix ``backbone.``):

==================================================================  ======================================================
official                                                            adaptvid
==================================================================  ======================================================
``conv1`` (a Conv3d with a 1-frame kernel), ``class_embedding``,     the CLIP image tower (OpenAI-CLIP layout, ``visual.*``;
``positional_embedding``, ``ln_pre``,                                ``conv1`` squeezed to the Conv2d it equals)
``transformer.resblocks.i.{attn,ln_1,mlp,ln_2}``
``transformer.resblocks.i.lmhra1.pos_embed.{0,1,2,3}``              ``backbone.slots.i.before_attn.uniformerv2_local.{norm,down,conv,up}``
``transformer.resblocks.i.lmhra2.pos_embed.*``                      ``backbone.slots.i.before_mlp.uniformerv2_local.*``
``transformer.temporal_cls_token``, ``transformer.dpe.j``           ``decoder.query_token``, ``decoder.dpe.j``
``transformer.dec.j.attn.in_proj_*`` / ``out_proj``                 ``decoder.blocks.j.attn.{q,k,v}_proj`` / ``out_proj``
``transformer.dec.j.ln_{1,2,3}``, ``.mlp.c_fc`` / ``c_proj``        ``decoder.blocks.j.norm{1,2,3}``, ``.mlp.fc1`` / ``fc2``
``transformer.balance``                                             ``decoder.balance`` (absent: the frozen variant)
``transformer.proj.0`` / ``proj.2``                                 ``decoder.norm`` / ``head``
==================================================================  ======================================================

The 1x1x1 convolutions of the local MHRA are the same linear maps as adaptvid's Linear layers (weights
reshaped). The CLIP tower of UniFormerV2 has no final norm and no projection (the decoder replaces the
readout); adaptvid's tower keeps its ``ln_post`` / ``proj`` unused and frozen, filled with the identity.

Refused with a message: the SSv2 configs' temporal down-sampling (a 3-frame, stride-2 ``conv1``),
which adaptvid's method does not implement. Not in the tensors: ``RETURN_LIST`` (the blocks the decoder
reads) — adaptvid reads the last ``N_LAYERS`` blocks, as every official config does; and the head count
(option ``heads``, default width // 64, the official 12 / 16).
"""
from __future__ import annotations

import re

import torch

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .openai_clip import split_openai_clip

NAME = "uniformerv2"
_LMHRA = re.compile(r"^transformer\.resblocks\.(\d+)\.lmhra([12])\.pos_embed\.([0-3])\.(.+)$")
_DEC = re.compile(r"^transformer\.dec\.(\d+)\.(.+)$")
_DPE = re.compile(r"^transformer\.dpe\.(\d+)\.(weight|bias)$")
_LMHRA_PART = {"0": "norm", "1": "down", "2": "conv", "3": "up"}
_DEC_RENAME = {"ln_1": "norm1", "ln_2": "norm2", "ln_3": "norm3", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
               "attn.out_proj": "attn.out_proj"}
# MODEL_ZOO.md's checkpoints this reads (the Something-Something ones use temporal down-sampling: refused).
RELEASES = (
    "k400_uniformerv2_b16_8x224.pyth", "k400_k710_uniformerv2_b16_8x224.pyth",
    "k400_k710_uniformerv2_l14_8x224.pyth", "k400_k710_uniformerv2_l14_16x224.pyth",
    "k400_k710_uniformerv2_l14_32x224.pyth", "k400_k710_uniformerv2_l14_32x336.pyth",
    "k400_k710_uniformerv2_l14_64x336.pyth", "frozen_k400_uniformerv2_l14_8x336.pyth",
    "frozen_k400_k710_uniformerv2_l14_8x336.pyth", "frozen_k400_k710_uniformerv2_l14_32x336.pyth",
    "k600_uniformerv2_b16_8x224.pyth", "k600_k710_uniformerv2_b16_8x224.pyth",
    "k600_k710_uniformerv2_l14_8x224.pyth", "k600_k710_uniformerv2_l14_16x224.pyth",
    "k600_k710_uniformerv2_l14_32x224.pyth", "k600_k710_uniformerv2_l14_32x336.pyth",
    "k600_k710_uniformerv2_l14_64x336.pyth", "frozen_k600_uniformerv2_l14_8x336.pyth",
    "frozen_k600_k710_uniformerv2_l14_8x336.pyth", "frozen_k600_k710_uniformerv2_l14_32x336.pyth",
    "k700_uniformerv2_b16_8x224.pyth", "k700_k710_uniformerv2_b16_8x224.pyth",
    "k700_k710_uniformerv2_l14_8x224.pyth", "k700_k710_uniformerv2_l14_16x224.pyth",
    "k700_k710_uniformerv2_l14_32x224.pyth", "k700_k710_uniformerv2_l14_32x336.pyth",
    "k700_k710_uniformerv2_l14_64x336.pyth", "frozen_k700_uniformerv2_l14_8x336.pyth",
    "frozen_k700_k710_uniformerv2_l14_8x336.pyth", "frozen_k700_k710_uniformerv2_l14_32x336.pyth",
    "k710_uniformerv2_b16_8x224.pyth", "k710_uniformerv2_l14_8x224.pyth", "k710_uniformerv2_l14_8x336.pyth",
    "frozen_k710_uniformerv2_l14_8x336.pyth", "mit_uniformerv2_b16_8x224.pyth", "mit_uniformerv2_l14_8x224.pyth",
    "mit_uniformerv2_l14_8x336.pyth", "anet_uniformerv2_l14_16x224.pyth", "anet_uniformerv2_l14_32x224.pyth",
    "hacs_uniformerv2_l14_16x224.pyth", "hacs_uniformerv2_l14_32x224.pyth",
)
_METHOD_SCALARS = ("transformer.temporal_cls_token", "transformer.balance", "transformer.proj.0.weight",
                   "transformer.proj.0.bias", "transformer.proj.2.weight", "transformer.proj.2.bias")


def _unwrap(state: dict) -> tuple[dict, str]:
    """PySlowFast keeps the weights under 'model_state'; returns (weights, the key prefix of the backbone)."""
    if "model_state" in state and isinstance(state["model_state"], dict):
        state = state["model_state"]
    for prefix in ("backbone.", ""):
        if f"{prefix}conv1.weight" in state and f"{prefix}transformer.temporal_cls_token" in state:
            return state, prefix
    raise CheckpointImportError(
        "uniformerv2: no UniFormerV2 network found (expected 'backbone.conv1.weight' and "
        "'backbone.transformer.temporal_cls_token', as PySlowFast saves Uniformerv2); check --format")


def _local(key: str, value: torch.Tensor, match) -> tuple[str, torch.Tensor]:
    block, which, part, rest = match.groups()
    point = "before_attn" if which == "1" else "before_mlp"
    module = _LMHRA_PART[part]
    if module in ("down", "up") and rest == "weight":
        value = value.reshape(value.shape[0], value.shape[1])      # a 1x1x1 Conv3d is a Linear
    return f"backbone.slots.{block}.{point}.uniformerv2_local.{module}.{rest}", value


def _decoder_layer(j: str, rest: str, value: torch.Tensor, out: dict) -> None:
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]
        for name, part in zip("qkv", value.chunk(3, dim=0)):
            out[f"decoder.blocks.{j}.attn.{name}_proj.{kind}"] = part
        return
    for old, new in _DEC_RENAME.items():
        if rest.startswith(old + "."):
            out[f"decoder.blocks.{j}.{new}{rest[len(old):]}"] = value
            return
    raise CheckpointImportError(f"uniformerv2: unexpected decoder key 'transformer.dec.{j}.{rest}'")


def _local_reduction(width: int, hidden: int) -> float:
    """A local_reduction with ``int(width // r) == hidden``: the official 1.5 when it fits."""
    for r in (1.5, width / hidden, width / (hidden + 0.5)):
        if int(width // r) == hidden:
            return r
    raise CheckpointImportError(f"uniformerv2: local MHRA width {hidden} on a {width}-wide tower has no reduction")


def _heads(options: dict) -> dict:
    """Head counts are not in the tensors: pass the user's override on (default width // 64)."""
    return {"heads": options["heads"]} if "heads" in options else {}


def convert(state: dict, options: dict) -> Conversion:
    state, prefix = _unwrap(state)
    net = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    conv1 = net["conv1.weight"]
    if conv1.ndim == 5:
        if conv1.shape[2] != 1:
            raise CheckpointImportError(
                f"uniformerv2: conv1 has a {conv1.shape[2]}-frame kernel (TEMPORAL_DOWNSAMPLE: True, the SSv2 configs); "
                "adaptvid's uniformerv2 embeds frames one by one and cannot reproduce it")
        conv1 = conv1[:, :, 0]
    tensors, method_keys = {}, set()
    hidden = None
    locals_seen = set()
    layers = set()
    for key, value in net.items():
        if (match := _LMHRA.match(key)) is not None:
            name, value = _local(key, value, match)
            tensors[name] = value
            locals_seen.add(match.group(2))
            if match.group(3) == "1" and match.group(4) == "weight":
                hidden = value.shape[0]
        elif (match := _DEC.match(key)) is not None:
            _decoder_layer(match.group(1), match.group(2), value, tensors)
            layers.add(int(match.group(1)))
        elif (match := _DPE.match(key)) is not None:
            tensors[f"decoder.dpe.{match.group(1)}.{match.group(2)}"] = value
        elif key in _METHOD_SCALARS:
            pass
        else:
            continue
        method_keys.add(key)
    for key in ("transformer.temporal_cls_token", "transformer.proj.0.weight", "transformer.proj.0.bias",
                "transformer.proj.2.weight", "transformer.proj.2.bias"):
        if key not in net:
            raise CheckpointImportError(f"uniformerv2: missing key '{prefix}{key}'")
        method_keys.add(key)
    tensors["decoder.query_token"] = net["transformer.temporal_cls_token"]
    tensors["decoder.norm.weight"], tensors["decoder.norm.bias"] = net["transformer.proj.0.weight"], net["transformer.proj.0.bias"]
    tensors["head.weight"], tensors["head.bias"] = net["transformer.proj.2.weight"], net["transformer.proj.2.bias"]
    fused = "transformer.balance" in net
    if fused:
        tensors["decoder.balance"] = net["transformer.balance"]
        method_keys.add("transformer.balance")

    width = conv1.shape[0]
    tower_state = {f"visual.{k}": v for k, v in net.items() if k not in method_keys and k != "conv1.weight"}
    tower_state["visual.conv1.weight"] = conv1
    # No ln_post / proj in UniFormerV2: the decoder is the readout. Identity fillers keep the tower loadable.
    tower_state.setdefault("visual.ln_post.weight", torch.ones(width))
    tower_state.setdefault("visual.ln_post.bias", torch.zeros(width))
    tower_state.setdefault("visual.proj", torch.eye(width))
    tower, rest = split_openai_clip(tower_state, **_heads(options))
    if tower is None or rest:
        raise CheckpointImportError(f"uniformerv2: unexpected keys {sorted(prefix + k[7:] for k in rest)[:10]}")

    method_options = {"frozen": not fused, "fusion": "on" if fused else "off", "local": bool(locals_seen),
                      "double_local": "2" in locals_seen, "num_global_layers": len(layers)}
    if hidden is not None:
        method_options["local_reduction"] = _local_reduction(width, hidden)
    if layers:
        c_fc = net["transformer.dec.0.mlp.c_fc.weight"]
        method_options["mlp_ratio"] = c_fc.shape[0] / c_fc.shape[1]
    num_frames = int(options.get("num_frames") or 8)
    return Conversion(method=NAME, options=method_options, tensors=tensors,
                      num_classes=net["transformer.proj.2.weight"].shape[0], num_frames=num_frames, tower=tower,
                      consumed={prefix + k for k in net})


register_format(ImportFormat(
    name=NAME,
    help="PySlowFast .pyth of Uniformerv2 (model_state: CLIP tower + local MHRA + global decoder + head)",
    releases=RELEASES,
    convert=convert,
    source="https://github.com/OpenGVLab/UniFormerV2",
))
