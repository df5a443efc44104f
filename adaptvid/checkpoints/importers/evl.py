"""Import the official EVL checkpoints (OpenGVLab/efficient-video-recognition) as ``evl`` models.

The official trainer (``main.py`` -> ``checkpoint.py:save_checkpoint``) saves ``{'model': DDP(EVLTransformer)
.state_dict(), 'optimizer', 'lr_sched', 'loss_scaler', 'next_step'}``. ``EVLTransformer`` (``model.py``) keeps
its CLIP backbone in a plain list in the released ``freeze_fp16`` / ``freeze_fp32`` modes ("avoid backbone
parameter registration"), so the released checkpoints hold the decoder and the head only: a **method-only**
import, combined with the backbone the user names (``backbone="clip-l14"`` / ``"clip"``: the OpenAI CLIP
weights the official loader converts). In ``backbone_mode='finetune'`` the backbone is registered and saved
too (``backbone.*``, ``vision_transformer.py:VisionTransformer2D``): that **full** form is read as well.

==================================================================  ============================================
official (after DDP's ``module.``)                                  adaptvid
==================================================================  ============================================
``decoder.cls_token`` (D,)                                          ``decoder.query_token`` (1, 1, D)
``decoder.temporal_conv.i``                                         ``decoder.temporal_conv.i``
``decoder.temporal_pos_embed.i``                                    ``decoder.temporal_pos_embedding.i``
``decoder.cross_attention.i.w1`` / ``w2`` (frame t-1 / t+1)         ``decoder.temporal_cross_attention.i.w_prev`` / ``w_next``
``decoder.decoder_layers.i.{attn.*_proj,mlp.fc1,mlp.fc2,norm1-3}``  ``decoder.blocks.i.*`` (same names)
``proj.0`` (LayerNorm) / ``proj.2`` (Linear)                        ``decoder.norm`` / ``head``
``backbone.patch_embed.proj`` (a Linear on flattened patches)       the CLIP tower's ``conv1`` (reshaped); a bias is
                                                                    folded into the patch positions' embedding
``backbone.cls_token`` / ``pos_embed`` / ``ln_pre``                 ``class_embedding`` / ``positional_embedding`` /
                                                                    ``ln_pre``
``backbone.blocks.i.attn.{q,k,v}_proj``, ``out_proj``               ``transformer.resblocks.i.attn.in_proj_*``,
                                                                    ``out_proj``
``backbone.blocks.i.{norm1,norm2,mlp.fc1,mlp.fc2}``                 ``...ln_1``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``
==================================================================  ============================================

What the tensors show is read from them: the decoder depth (``num_layers``), which local temporal modules
exist, the clip length (the temporal position embedding). Not in the tensors: the decoder's head count,
which adaptvid takes from the backbone (every official script uses the backbone's: 12 on B/16, 16 on L/14),
and, in the full form, the backbone's (``heads=``, default width // 64). A decoder whose attention width or
MLP ratio differs from the backbone width x 4 (``--decoder_qkv_dim`` / ``--decoder_mlp_factor`` changed) is
refused: adaptvid's decoder does not have those options. The official frozen backbone runs in fp16
(``freeze_fp16``); adaptvid runs it in the model's dtype.
"""
from __future__ import annotations

import re

import torch

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .openai_clip import split_openai_clip

NAME = "evl"
_LAYER = re.compile(r"^decoder\.decoder_layers\.(\d+)\.(.+)$")
_CONV = re.compile(r"^decoder\.temporal_conv\.(\d+)\.(weight|bias)$")
_POS = re.compile(r"^decoder\.temporal_pos_embed\.(\d+)$")
_CROSS = re.compile(r"^decoder\.cross_attention\.(\d+)\.(w1|w2)$")
_CROSS_NAME = {"w1": "w_prev", "w2": "w_next"}   # w1: frame t's queries on frame t-1's keys
_LAYER_PARTS = re.compile(r"^(attn\.(q|k|v|out)_proj|mlp\.fc[12]|norm[123])\.(weight|bias)$")
_HEAD = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias")
_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.+)$")
_BLOCK_RENAME = {"norm1": "ln_1", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                 "attn.out_proj": "attn.out_proj"}
RELEASES = ("the README's K400 models (Google Drive): ViT-B/16 8x16, 16x16, 32x8 and ViT-L/14 8x16, 16x16, 32x8 "
            "(decoder 4x768 / 4x1024; checkpoint-N.pth)",)


def _decoder(state: dict) -> tuple[dict, set, set]:
    """adaptvid decoder/head tensors, the official keys used, and the decoder layer indices."""
    tensors, used, layers = {}, set(), set()
    for key, value in state.items():
        if (match := _LAYER.match(key)) is not None:
            if not _LAYER_PARTS.match(match.group(2)):
                continue   # not consumed: reported as unexpected
            tensors[f"decoder.blocks.{match.group(1)}.{match.group(2)}"] = value
            layers.add(int(match.group(1)))
        elif (match := _CONV.match(key)) is not None:
            tensors[f"decoder.temporal_conv.{match.group(1)}.{match.group(2)}"] = value
        elif (match := _POS.match(key)) is not None:
            tensors[f"decoder.temporal_pos_embedding.{match.group(1)}"] = value
        elif (match := _CROSS.match(key)) is not None:
            tensors[f"decoder.temporal_cross_attention.{match.group(1)}.{_CROSS_NAME[match.group(2)]}"] = value
        elif key == "decoder.cls_token":
            tensors["decoder.query_token"] = value.reshape(1, 1, -1)
        elif key in _HEAD:
            name = "decoder.norm" if key.startswith("proj.0.") else "head"
            tensors[f"{name}.{key.rsplit('.', 1)[1]}"] = value
        else:
            continue
        used.add(key)
    return tensors, used, layers


def _check_decoder_widths(state: dict, width: int) -> None:
    q = state["decoder.decoder_layers.0.attn.q_proj.weight"]
    fc1 = state["decoder.decoder_layers.0.mlp.fc1.weight"]
    if q.shape[0] != width:
        raise CheckpointImportError(
            f"evl: the decoder attends with {q.shape[0]} channels on {width}-wide features (--decoder_qkv_dim "
            f"{q.shape[0]}); adaptvid's evl decoder attends at the feature width only")
    if fc1.shape[0] != 4 * width:
        raise CheckpointImportError(
            f"evl: the decoder MLP is {fc1.shape[0]} wide on {width}-wide features (--decoder_mlp_factor "
            f"{fc1.shape[0] / width:g}); adaptvid's evl decoder uses the official factor 4 only")


def _tower(state: dict, options: dict):
    """The fine-tuned backbone (``backbone.*``, backbone_mode='finetune') in OpenAI-CLIP names, as a TowerSpec."""
    net = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    for needed in ("patch_embed.proj.weight", "cls_token", "pos_embed", "ln_pre.weight"):
        if needed not in net:
            raise CheckpointImportError(f"evl: the checkpoint's backbone has no 'backbone.{needed}' (a "
                                        "VisionTransformer2D with ln_pre, as the official ViT presets build)")
    linear = net["patch_embed.proj.weight"]                      # (D, 3 * p * p), flattened as (C, p, p)
    width = linear.shape[0]
    patch = round((linear.shape[1] / 3) ** 0.5)
    if 3 * patch * patch != linear.shape[1]:
        raise CheckpointImportError(f"evl: backbone.patch_embed.proj.weight {tuple(linear.shape)} is not a square "
                                    "RGB patch embedding")
    pos = net["pos_embed"]
    bias = net.get("patch_embed.proj.bias")
    if bias is not None:
        # A bias on every patch token, added before the position embedding: the same sum with the bias moved
        # into the patch positions' rows of that embedding (the class token's row gets none).
        pos = torch.cat([pos[:1], pos[1:] + bias.to(pos.dtype)], dim=0)
    visual = {"conv1.weight": linear.reshape(width, 3, patch, patch), "class_embedding": net["cls_token"],
              "positional_embedding": pos, "ln_pre.weight": net["ln_pre.weight"],
              "ln_pre.bias": net["ln_pre.bias"]}
    used = {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "ln_pre.weight",
            "ln_pre.bias"} & set(net)
    qkv: dict[str, dict] = {}
    for key, value in net.items():
        if (match := _BLOCK.match("backbone." + key)) is None:
            continue
        block, rest = match.groups()
        part = re.match(r"^attn\.(q|k|v)_proj\.(weight|bias)$", rest)
        if part is not None:
            qkv.setdefault(f"{block}.{part.group(2)}", {})[part.group(1)] = value
            used.add(key)
            continue
        for old, new in _BLOCK_RENAME.items():
            if rest.startswith(old + "."):
                visual[f"transformer.resblocks.{block}.{new}{rest[len(old):]}"] = value
                used.add(key)
                break
    for name, parts in qkv.items():
        block, kind = name.split(".")
        lacking = [f"backbone.blocks.{block}.attn.{p}_proj.{kind}" for p in "qkv" if p not in parts]
        if lacking:
            raise CheckpointImportError(f"evl: the backbone lacks {', '.join(lacking)}")
        visual[f"transformer.resblocks.{block}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"])
    # VisionTransformer2D has no final norm or projection (the decoder is the readout): identity fillers.
    visual["ln_post.weight"], visual["ln_post.bias"] = torch.ones(width), torch.zeros(width)
    visual["proj"] = torch.eye(width)
    heads = {"heads": options["heads"]} if "heads" in options else {}
    tower, rest = split_openai_clip({f"visual.{k}": v for k, v in visual.items()}, **heads)
    if tower is None or rest:
        raise CheckpointImportError(f"evl: unexpected backbone tensors {sorted(rest)[:10]}")
    return tower, {"backbone." + k for k in used}


def convert(state: dict, options: dict) -> Conversion:
    if "decoder.cls_token" not in state or "proj.2.weight" not in state:
        raise CheckpointImportError(
            "evl: this is not an EVL (OpenGVLab/efficient-video-recognition) checkpoint: it has no "
            "'decoder.cls_token' and 'proj.2.weight' (EVLTransformer's decoder and head); check --format")
    tensors, consumed, layers = _decoder(state)
    missing_head = [k for k in _HEAD if k not in state]
    if missing_head or not layers:
        raise CheckpointImportError(f"evl: missing {missing_head or ['decoder.decoder_layers.0.*']}")
    width = state["decoder.cls_token"].shape[-1]
    _check_decoder_widths(state, width)
    tower = None
    if any(k.startswith("backbone.") for k in state):
        tower, used = _tower(state, options)
        consumed |= used
    pos = [k for k in state if _POS.match(k)]
    num_frames = state[pos[0]].shape[0] if pos else int(options.get("num_frames") or 8)
    method_options = {
        "num_layers": len(layers),
        "temporal_conv": any(_CONV.match(k) for k in state),
        "temporal_pos": bool(pos),
        "temporal_cross_attention": any(_CROSS.match(k) for k in state),
    }
    return Conversion(method=NAME, options=method_options, tensors=tensors, num_classes=state["proj.2.weight"].shape[0],
                      num_frames=num_frames, tower=tower, consumed=consumed)


register_format(ImportFormat(
    name=NAME,
    help="official EVL checkpoint-N.pth: {'model': EVLTransformer.state_dict(), ...}: decoder + head (frozen "
         "backbone, the released form: pass backbone='clip' or 'clip-l14'), or with the backbone (finetune mode)",
    releases=RELEASES,
    convert=convert,
    source="https://github.com/OpenGVLab/efficient-video-recognition",
))
