"""Import the official ST-Adapter checkpoints (linziyi96/st-adapter) as ``st-adapter`` models.

The official trainer (``main.py`` -> ``utils.save_model``) writes ``checkpoint-N.pth`` holding
``{'model': state_dict, 'optimizer', 'lr_sched', 'loss_scaler', 'next_epoch'}``, where ``state_dict`` is
``VisionTransformer.state_dict()`` (``models_adapter.py``) **minus every frozen parameter**: the adapters
and the ``fc`` head only. That is the **method-only** form: the user names the backbone it was trained on
(``backbone="clip"``: CLIP ViT-B/16 with OpenAI weights, for both released models). The whole
``VisionTransformer.state_dict()`` (the frozen tower in OpenAI-CLIP names, without ``proj``, beside the
adapters) is read too: the **full** form, its tower's shape inferred from the tensors.

=====================================================  ==========================================================
official ``VisionTransformer``                          adaptvid
=====================================================  ==========================================================
``transformer.resblocks.i.adapter_pre_attn.fc1``        ``backbone.slots.i.before_attn.st_adapter.down``
``transformer.resblocks.i.adapter_pre_attn.conv``       ``backbone.slots.i.before_attn.st_adapter.conv``
``transformer.resblocks.i.adapter_pre_attn.fc2``        ``backbone.slots.i.before_attn.st_adapter.up``
``transformer.resblocks.i.adapter_pre_mlp.*``           ``backbone.slots.i.before_mlp.st_adapter.*`` (same names)
``fc``                                                  ``head``
``conv1``, ``class_embedding``, ``positional_embedding``, the CLIP image tower (full form only)
``ln_pre``, ``transformer.resblocks.i.{attn,ln_*,mlp}``,
``ln_post``
=====================================================  ==========================================================

Read from the tensors: the bottleneck (``fc1`` rows: 384 in both released models), the temporal kernel
(the conv's ``(k, 1, 1)``: 3), the placement (adapters before the MLP only: ``"mlp"``, the K400 "12x384"
model; before attention and MLP: ``"attn+mlp"``, the SSv2 "24x384" model). The official readout (CLS
averaged over time, then ``ln_post``, dropout, ``fc``; no CLIP projection) is adaptvid's ``token-mean``.
Not in the tensors: ``num_frames`` (8, both official scripts) and, in the full form, ``heads`` (width // 64).
The official model runs its frozen tower in fp16 under autocast; adaptvid's import is fp32.
"""
from __future__ import annotations

import re

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .openai_clip import split_openai_clip

NAME = "st-adapter"
_ADAPTER = re.compile(r"^transformer\.resblocks\.(\d+)\.adapter_pre_(attn|mlp)\.(fc1|conv|fc2)\.(weight|bias)$")
_POINT = {"attn": "before_attn", "mlp": "before_mlp"}
_LAYER = {"fc1": "down", "conv": "conv", "fc2": "up"}
_PLACEMENT = {frozenset({"mlp"}): "mlp", frozenset({"attn", "mlp"}): "attn+mlp"}
_HEAD = ("fc.weight", "fc.bias")


def _adapters(state: dict) -> tuple[dict, set, set, set]:
    """adaptvid adapter tensors, the official keys they came from, the points used, the blocks that have any."""
    tensors, used, points, blocks = {}, set(), set(), set()
    for key, value in state.items():
        match = _ADAPTER.match(key)
        if match is None:
            continue
        block, point, layer, kind = match.groups()
        tensors[f"backbone.slots.{block}.{_POINT[point]}.st_adapter.{_LAYER[layer]}.{kind}"] = value
        used.add(key)
        points.add(point)
        blocks.add(int(block))
    return tensors, used, points, blocks


def _shape_options(state: dict, points: set) -> dict:
    """bottleneck, kernel_t and placement, read from the first adapter's tensors."""
    placement = _PLACEMENT.get(frozenset(points))
    if placement is None:
        raise CheckpointImportError(
            "st-adapter: adapters before attention only (adapter_pre_mlp=False) have no adaptvid placement; "
            "adaptvid's st-adapter places them before the MLP ('mlp') or before attention and MLP ('attn+mlp')")
    point = "mlp" if "mlp" in points else "attn"
    fc1 = next(v for k, v in state.items() if k.endswith(f"adapter_pre_{point}.fc1.weight"))
    conv = next(v for k, v in state.items() if k.endswith(f"adapter_pre_{point}.conv.weight"))
    kernel = tuple(conv.shape[2:])
    if len(kernel) != 3 or kernel[1:] != (1, 1) or kernel[0] % 2 == 0:
        raise CheckpointImportError(
            f"st-adapter: adapter conv kernel {kernel} is not supported: adaptvid's st-adapter convolves over time "
            "only, with an odd kernel (k, 1, 1) (the official configs use (3, 1, 1))")
    return {"bottleneck": fc1.shape[0], "kernel_t": kernel[0], "placement": placement}


def convert(state: dict, options: dict) -> Conversion:
    tensors, consumed, points, blocks = _adapters(state)
    if not tensors:
        raise CheckpointImportError(
            "st-adapter: no ST-Adapter tensors ('transformer.resblocks.i.adapter_pre_mlp.fc1.weight', ...); "
            "is this a linziyi96/st-adapter checkpoint? check --format")
    missing_head = [k for k in _HEAD if k not in state]
    if missing_head:
        raise CheckpointImportError(f"st-adapter: no classification head {missing_head} (the official 'fc' layer)")
    method_options = _shape_options(state, points)
    tensors["head.weight"], tensors["head.bias"] = state["fc.weight"], state["fc.bias"]
    consumed |= set(_HEAD)
    # The full form: the rest is the frozen tower, in OpenAI-CLIP names without the visual. prefix or proj.
    rest = {f"visual.{k}": v for k, v in state.items() if k not in consumed}
    heads = {"heads": options["heads"]} if "heads" in options else {}
    tower, leftover = split_openai_clip(rest, **heads)
    if tower is not None:
        depth = tower.config["vision_cfg"]["layers"]
        if blocks != set(range(depth)):
            raise CheckpointImportError(
                f"st-adapter: adapters in blocks {sorted(blocks)} of {depth}: adaptvid's st-adapter puts them in "
                "every block (the official adapter_layers == layers, as in every released model)")
        consumed |= {k[len("visual."):] for k in tower.tensors}
    # anything else stays unconsumed: import_checkpoint names it as unexpected
    return Conversion(method=NAME, options=method_options, tensors=tensors, num_classes=state["fc.weight"].shape[0],
                      num_frames=int(options.get("num_frames") or 8), tower=tower, consumed=consumed)


register_format(ImportFormat(
    name=NAME,
    help="official ST-Adapter checkpoint-N.pth: {'model': adapters + fc only} (pass the backbone, backbone='clip'), "
         "or the whole VisionTransformer state dict (tower included)",
    releases=("K400 CLIP ViT-B/16 12x384 and SSv2 CLIP ViT-B/16 24x384 (the README's Google Drive 'checkpoint' links)",),
    convert=convert,
    source="https://github.com/linziyi96/st-adapter",
))
