"""Import the official X-CLIP checkpoints (microsoft/VideoX, folder ``X-CLIP``) as ``x-clip`` models.

The official trainer (``main.py`` -> ``utils/tools.py:epoch_saving``) saves ``{'model': XCLIP.state_dict(),
'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch', 'config'}``: the whole model, so this is a full-form
import (the CLIP towers come from the checkpoint). Its keys (``models/xclip.py``, ``cct.py``, ``mit.py``,
``prompt.py``) map onto adaptvid's ``x-clip`` modules (``adaptvid/methods/xclip.py``) as:

=========================================================  ==========================================================
official ``XCLIP``                                          adaptvid
=========================================================  ==========================================================
``visual.*``, ``token_embedding``, ``transformer.*``, ...  the CLIP towers (OpenAI-CLIP layout: ``split_openai_clip``)
``visual.transformer.resblocks.i.message_{fc,ln,attn}``    ``backbone.slots.i.attn_tokens.x_clip.message_*``
``mit.positional_embedding``, ``mit.resblocks.j``          ``video_encoder.mit.position_embedding``, ``.blocks.j``
``prompts_visual_ln``, ``prompts_visual_proj``             ``video_encoder.prompts_visual_ln``, ``_proj``
``prompts_generator.norm``, ``.decoder.j``, ``.alpha``     ``head.prompts_generator.layernorm``, ``.layers.j``, ``.alpha``
=========================================================  ==========================================================

``nn.MultiheadAttention``'s fused ``in_proj_weight`` / ``in_proj_bias`` (message attention, MIT) are split
into the separate q/k/v projections adaptvid uses (same parameters). Head counts are not in the
tensors: the official code uses ``width // 64`` everywhere (image tower, MIT, prompt generator); the
options ``mit_heads`` / ``vsp_heads`` override it for a model trained otherwise.
"""
from __future__ import annotations

import re


from ..xclip_transformers import _renamed, _temporal_table
from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .openai_clip import split_openai_clip

NAME = "x-clip"
_MESSAGE = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.(message_fc|message_ln|message_attn)\.(.+)$")
_METHOD_PREFIXES = ("mit.", "prompts_generator.", "prompts_visual_ln.")
_METHOD_KEYS = ("prompts_visual_proj",)
_ATTN = r"(in_proj_(weight|bias)|out_proj\.(weight|bias))$"
# The method keys this importer maps; any other key under the method prefixes stays unconsumed, so the
# base reports it as unexpected instead of it being dropped.
_MAPPED = re.compile(
    r"^(visual\.transformer\.resblocks\.\d+\.(message_(fc|ln)\.(weight|bias)$|message_attn\." + _ATTN + ")"
    r"|mit\.(positional_embedding$|resblocks\.\d+\.(attn\." + _ATTN + r"|(ln_1|ln_2|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)$))"
    r"|prompts_generator\.(alpha$|norm\.|decoder\.\d+\.)"
    r"|prompts_visual_(ln\.(weight|bias)|proj)$)")


def split_in_proj(state: dict, prefix: str, out_prefix: str) -> dict:
    """``nn.MultiheadAttention``'s fused ``{prefix}in_proj_{weight,bias}`` as ``{out_prefix}{q,k,v}_proj.*``
    and ``{prefix}out_proj.*`` as ``{out_prefix}out_proj.*`` (the parameters adaptvid's SelfAttention holds)."""
    out = {}
    for kind in ("weight", "bias"):
        fused = state[f"{prefix}in_proj_{kind}"]
        for name, part in zip("qkv", fused.chunk(3, dim=0)):
            out[f"{out_prefix}{name}_proj.{kind}"] = part
        out[f"{out_prefix}out_proj.{kind}"] = state[f"{prefix}out_proj.{kind}"]
    return out


def _with_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _message_modules(state: dict) -> dict:
    out = {}
    for key in state:
        match = _MESSAGE.match(key)
        if match is None or match.group(2) == "message_attn":
            continue
        block, module, rest = match.groups()
        out[f"backbone.slots.{block}.attn_tokens.x_clip.{module}.{rest}"] = state[key]
    blocks = sorted({int(m.group(1)) for m in map(_MESSAGE.match, state) if m and m.group(2) == "message_attn"})
    for block in blocks:
        out.update(split_in_proj(state, f"visual.transformer.resblocks.{block}.message_attn.",
                                 f"backbone.slots.{block}.attn_tokens.x_clip.message_attn."))
    return out


def _mit(state: dict, num_frames: int) -> dict:
    mit = _with_prefix(state, "mit.")
    out = {"video_encoder.mit.position_embedding": _temporal_table(mit.pop("positional_embedding"), num_frames)}
    blocks = sorted({int(k.split(".")[1]) for k in mit if k.startswith("resblocks.")})
    for j in blocks:
        block = _with_prefix(mit, f"resblocks.{j}.")
        out.update(split_in_proj(block, "attn.", f"video_encoder.mit.blocks.{j}.self_attn."))
        rest = {k: v for k, v in block.items() if not k.startswith("attn.")}
        renamed = _renamed(rest, (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.0."),
                                  ("mlp.c_proj.", "mlp.2.")))
        out.update({f"video_encoder.mit.blocks.{j}.{k}": v for k, v in renamed.items()})
    return out


def _prompt_generator(state: dict) -> dict:
    generator = _renamed(_with_prefix(state, "prompts_generator."),
                         (("decoder.", "layers."), ("norm.", "layernorm."), (".mlp.3.", ".mlp.2.")))
    # ("norm." cannot hit the layers' "norm1." / "norm3."; nn.Dropout at mlp.2 holds nothing, so mlp.3 -> mlp.2)
    return {f"head.prompts_generator.{k}": v for k, v in generator.items()}


def _heads(width: int, options: dict, name: str) -> int:
    heads = options.get(name, width // 64)   # the official code: embed_dim // 64 (mit.py, prompt.py)
    if heads < 1 or width % heads:
        raise CheckpointImportError(f"x-clip: embed dim {width} gives {heads} attention heads for {name}; "
                                    f"pass {name}=N with N dividing {width}")
    return heads


def convert_xclip(state: dict, options: dict) -> Conversion:
    """Official X-CLIP state dict -> Conversion (full form: towers + x-clip modules)."""
    if "mit.positional_embedding" not in state or "prompts_generator.alpha" not in state:
        raise CheckpointImportError(
            "x-clip: this is not an official X-CLIP (microsoft/VideoX) checkpoint: it has no 'mit.positional_embedding' "
            "/ 'prompts_generator.alpha'; a transformers XCLIPModel folder loads with adaptvid.load_xclip instead")
    method_keys = {k for k in state if _MESSAGE.match(k) or k.startswith(_METHOD_PREFIXES) or k in _METHOD_KEYS}
    tower, rest = split_openai_clip({k: v for k, v in state.items() if k not in method_keys}, **(
        {"heads": options["heads"]} if "heads" in options else {}))
    if tower is None:
        raise CheckpointImportError("x-clip: the checkpoint holds no CLIP image tower ('visual.conv1.weight', ...)")
    trained_frames = state["mit.positional_embedding"].shape[1]
    num_frames = int(options.get("num_frames") or trained_frames)
    embed_dim = state["mit.positional_embedding"].shape[-1]
    mapped = {k: state[k] for k in method_keys if _MAPPED.match(k)}   # the rest stays unconsumed (unexpected)
    tensors = {**_message_modules(mapped), **_mit(mapped, num_frames), **_prompt_generator(mapped),
               "video_encoder.prompts_visual_ln.weight": state["prompts_visual_ln.weight"],
               "video_encoder.prompts_visual_ln.bias": state["prompts_visual_ln.bias"],
               "video_encoder.prompts_visual_proj": state["prompts_visual_proj"]}
    method_options = dict(
        mit_layers=len({k.split(".")[2] for k in state if k.startswith("mit.resblocks.")}),
        mit_heads=_heads(embed_dim, options, "mit_heads"),
        vsp_layers=len({k.split(".")[2] for k in state if k.startswith("prompts_generator.decoder.")}),
        vsp_heads=_heads(embed_dim, options, "vsp_heads"),
    )
    consumed = set(mapped) | (set(state) - set(method_keys) - set(rest))
    return Conversion(method=NAME, options=method_options, tensors=tensors, num_frames=num_frames, tower=tower,
                      consumed=consumed)


register_format(ImportFormat(
    name=NAME,
    help="official X-CLIP (microsoft/VideoX) .pth: {'model': XCLIP.state_dict(), ...}; the whole model (full form)",
    releases=("k400_32_8.pth", "k400_32_16.pth", "k400_16_8.pth", "k400_16_16.pth", "k400_14_8.pth",
              "k400_14_16_336.pth", "k600_16_8.pth", "k600_16_16.pth", "k600_14_8.pth",
              "few_hmdb_{2,4,8,16}.pth", "few_ucf_{2,4,8,16}.pth", "zero.pth"),
    convert=convert_xclip,
    source="https://github.com/microsoft/VideoX/tree/master/X-CLIP",
))
