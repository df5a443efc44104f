"""The frozen CLIP tower inside official checkpoints, in the OpenAI CLIP layout every CLIP-based
official repository keeps (``visual.conv1``, ``visual.transformer.resblocks.i.attn.in_proj_weight``,
``token_embedding``, ``ln_final``, ``text_projection``, ...): find it, infer its configuration from
the tensor shapes, and build it as an open_clip model (same key names) behind adaptvid's backbone."""
from __future__ import annotations

import re
from typing import Optional

from .base import CheckpointImportError, TowerSpec

_BLOCK = r"transformer\.resblocks\.(\d+)\.(ln_1\.(weight|bias)|ln_2\.(weight|bias)|attn\.in_proj_(weight|bias)" \
         r"|attn\.out_proj\.(weight|bias)|mlp\.c_fc\.(weight|bias)|mlp\.c_proj\.(weight|bias))$"
_VISUAL = re.compile(r"^visual\.(conv1\.weight|class_embedding|positional_embedding|ln_pre\.(weight|bias)"
                     r"|ln_post\.(weight|bias)|proj|" + _BLOCK + ")$")
_TEXT = re.compile(r"^(token_embedding\.weight|positional_embedding|ln_final\.(weight|bias)|text_projection"
                   r"|logit_scale|" + _BLOCK + ")$")
def _layers(keys, prefix: str) -> int:
    found = {int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)}
    if found != set(range(len(found))):
        raise CheckpointImportError(f"the tower's blocks are not numbered 0..n-1 under {prefix!r}: {sorted(found)}")
    return len(found)


def _heads(width: int, given: Optional[int]) -> int:
    heads = int(given) if given else max(1, width // 64)
    if width % heads:
        raise CheckpointImportError(f"width {width} is not divisible by {heads} heads: pass the model's head count")
    return heads


def split_openai_clip(state: dict, prefix: str = "", heads: Optional[int] = None,
                      text_heads: Optional[int] = None) -> tuple[Optional[TowerSpec], dict]:
    """(the tower under ``prefix`` or None, the other tensors). Head counts cannot be read from the
    tensors: ``width // 64`` (the CLIP convention) unless given."""
    inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    tower = {k: v for k, v in inner.items() if _VISUAL.match(k) or _TEXT.match(k)}
    rest = {k: v for k, v in state.items() if not (k.startswith(prefix) and k[len(prefix):] in tower)}
    if "visual.conv1.weight" not in tower:
        return None, rest
    conv1 = tower["visual.conv1.weight"]
    width, patch = conv1.shape[0], conv1.shape[-1]
    grid = round((tower["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    c_fc = tower["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    vision = dict(width=width, layers=_layers(tower, "visual.transformer.resblocks."), patch_size=patch,
                  image_size=patch * grid, head_width=width // _heads(width, heads), mlp_ratio=c_fc.shape[0] / width)
    has_text = "token_embedding.weight" in tower
    if has_text:
        text_width = tower["ln_final.weight"].shape[0]
        text = dict(width=text_width, heads=_heads(text_width, text_heads),
                    layers=_layers(tower, "transformer.resblocks."),
                    context_length=tower["positional_embedding"].shape[0],
                    vocab_size=tower["token_embedding.weight"].shape[0],
                    mlp_ratio=tower["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width)
    else:
        text = None
    embed_dim = tower["visual.proj"].shape[1] if "visual.proj" in tower else width
    config = dict(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    return TowerSpec("openai-clip", config, tower), rest


def tower_backbone(spec: TowerSpec, fmt: str, name: Optional[str] = None):
    """An open_clip backbone holding the checkpoint's tower tensors (strictly: all of them, all used)."""
    from ...backbones.open_clip_folder import build_clip, tokenizer_for
    from ...backbones.openclip import OpenClipBackbone

    model = build_clip(spec.config)
    target = model if spec.config.get("text_cfg") else model.visual
    tensors = spec.tensors if target is model else {k[len("visual."):]: v for k, v in spec.tensors.items()}
    if "proj" not in tensors and target is model.visual:
        spec.config["no_projection"] = True   # a tower without the CLIP projection (its readout does not use it)
        model.visual.proj = None
    own = target.state_dict()
    missing = sorted(set(own) - set(tensors))
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in tensors.items()
             if k in own and own[k].shape != v.shape]
    if missing or wrong:
        raise CheckpointImportError(f"{fmt}: the checkpoint's CLIP tower is incomplete or mis-sized (missing "
                                    f"{missing[:10]}, wrong shapes {wrong[:10]}); pass heads=/text_heads= if the "
                                    "head counts are not width // 64")
    target.load_state_dict(tensors, strict=True)
    backbone = OpenClipBackbone(name or f"imported:{fmt}", model, tokenizer_for(spec.config))
    backbone.imported_config = spec.config   # what save_imported writes beside the tower
    return backbone
