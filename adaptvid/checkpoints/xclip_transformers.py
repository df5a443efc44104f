"""Load X-CLIP checkpoints saved in the transformers format (``XCLIPModel``) as adaptvid models.

``load_xclip(path_or_repo)`` builds backbone ``hf-xclip:<path_or_repo>`` (the CLIP towers of the
checkpoint, see ``adaptvid/backbones/hf_xclip.py``) with method ``x-clip`` sized from the checkpoint's
config, and copies the checkpoint's X-CLIP modules into adaptvid's (``transfer_xclip_weights``):

====================================================  ==================================================
transformers ``XCLIPModel``                           adaptvid
====================================================  ==================================================
``vision_model.encoder.layers.i.message_{fc,ln,attn}``  ``backbone.slots.i.attn_tokens.x_clip.message_*``
``mit.position_embedding``, ``mit.encoder.layers.i``    ``video_encoder.mit.position_embedding``, ``.blocks.i``
``prompts_visual_layernorm``, ``prompts_visual_projection``  ``video_encoder.prompts_visual_ln``, ``_proj``
``prompts_generator.decoder.i``                          ``head.prompts_generator.layers.i``
``logit_scale``, ``text_model``, ``text_projection``     shared with ``model.text`` (not copied)
====================================================  ==================================================

The loaded model gives transformers' ``logits_per_video`` for the same video and text ids (video in
adaptvid's ``(B, C, T, H, W)`` layout) and is trained, saved and reloaded like any adaptvid model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import create_backbone
from ..backbones.hf_xclip import HFXClipBackbone
from ..methods.xclip import XClipClassifier, XClipVideoEncoder
from ..model import build_model

SUPPORTED_ACTIVATION = "quick_gelu"


def _renamed(state: dict, renames: Sequence[tuple[str, str]]) -> dict:
    out = {}
    for key, value in state.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


def _load(module: nn.Module, state: dict, what: str) -> None:
    expected = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and expected[k].shape != v.shape]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if wrong or missing or unexpected:
        raise ValueError(
            f"x-clip: the checkpoint's {what} does not fit the method's modules (missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, wrong shape {wrong[:4]}); build it with adaptvid.load_xclip, which sizes them from the "
            "checkpoint's config, or pass the matching mit_layers / mit_heads / vsp_layers / vsp_heads options"
        )
    with torch.no_grad():
        for key, value in state.items():
            expected[key].copy_(value)


def _set_eps(module: nn.Module, eps: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps


def _check_config(config) -> None:
    vision = config.vision_config
    for what, act in (("vision_config.hidden_act (the MIT's MLP)", vision.hidden_act),
                      ("prompt_hidden_act", config.prompt_hidden_act)):
        if act != SUPPORTED_ACTIVATION:
            raise ValueError(f"x-clip: {what} is {act!r}; adaptvid's X-CLIP modules use {SUPPORTED_ACTIVATION!r} "
                             "(every released X-CLIP checkpoint does)")
    if vision.mit_hidden_size != config.projection_dim:
        raise ValueError(f"x-clip: mit_hidden_size {vision.mit_hidden_size} must equal projection_dim "
                         f"{config.projection_dim} (the MIT runs on the projected frame embeddings)")
    if vision.mit_intermediate_size != 4 * vision.mit_hidden_size:
        raise ValueError(f"x-clip: mit_intermediate_size {vision.mit_intermediate_size} must be 4 x mit_hidden_size "
                         f"({4 * vision.mit_hidden_size}), as in the paper")


def _temporal_table(table: torch.Tensor, frames: int) -> torch.Tensor:
    """The MIT's (1, T0, E) position table resampled (linearly) to ``frames`` entries, when they differ."""
    if table.shape[1] == frames:
        return table
    return F.interpolate(table.transpose(1, 2), size=frames, mode="linear", align_corners=False).transpose(1, 2)


def transfer_xclip_weights(model, xclip_model: nn.Module, messages: Sequence[dict]) -> None:
    """Copy an XCLIPModel's message, MIT and prompt weights into ``model``'s x-clip modules (in place)."""
    config = xclip_model.config
    _check_config(config)
    encoder, head = model.video_encoder, model.head
    if not isinstance(encoder, XClipVideoEncoder) or not isinstance(head, XClipClassifier):
        raise ValueError("transfer_xclip_weights needs a model built with method 'x-clip'")
    vision_eps, text_eps = config.vision_config.layer_norm_eps, config.text_config.layer_norm_eps
    # Head counts leave no trace in the weights' shapes: check them, or the copied weights would compute else.
    heads = {"mit_heads": ({b.self_attn.heads for b in encoder.mit.blocks}, config.vision_config.mit_num_attention_heads),
             "vsp_heads": ({layer.cross_attn.heads for layer in head.prompts_generator.layers},
                           config.prompt_num_attention_heads)}
    for option, (ours, theirs) in heads.items():
        if ours != {theirs}:
            raise ValueError(f"x-clip: the checkpoint uses {theirs} heads where this model has {option}={min(ours)}; "
                             f"pass {option}={theirs}, or build it with adaptvid.load_xclip (sized from the checkpoint)")
    if messages is None:
        raise ValueError("x-clip: this hf-xclip backbone already gave its message modules to a model; "
                         "create a new backbone (or use adaptvid.load_xclip) for another model")

    slots = model.backbone.slots
    if len(messages) != len(slots):
        raise ValueError(f"x-clip: the checkpoint has {len(messages)} message modules for {len(slots)} blocks")
    for index, (slot, parts) in enumerate(zip(slots, messages)):
        state = {f"{name}.{key}": value for name, module in parts.items() for key, value in module.state_dict().items()}
        _load(slot.attn_tokens["x_clip"], state, f"message modules of block {index}")
        _set_eps(slot.attn_tokens["x_clip"], vision_eps)

    mit = xclip_model.mit.state_dict()
    mit["position_embedding"] = _temporal_table(mit["position_embedding"], encoder.mit.position_embedding.shape[1])
    _load(encoder.mit, _renamed(mit, (("encoder.layers.", "blocks."), ("mlp.fc1.", "mlp.0."), ("mlp.fc2.", "mlp.2."))),
          "multi-frame integration transformer")
    _set_eps(encoder.mit, vision_eps)
    _load(encoder.prompts_visual_ln, xclip_model.prompts_visual_layernorm.state_dict(), "prompts_visual_layernorm")
    encoder.prompts_visual_ln.eps = vision_eps
    with torch.no_grad():
        if encoder.prompts_visual_proj.shape != xclip_model.prompts_visual_projection.shape:
            raise ValueError("x-clip: the checkpoint's prompts_visual_projection does not fit this tower")
        encoder.prompts_visual_proj.copy_(xclip_model.prompts_visual_projection)

    generator = head.prompts_generator
    _load(generator, _renamed(xclip_model.prompts_generator.state_dict(), (("decoder.", "layers."), ("mlp.3.", "mlp.2."))),
          "prompt generator")
    _set_eps(generator, text_eps)
    generator.layernorm.eps = vision_eps   # transformers normalises the visual side with the vision eps


def import_xclip_weights(model) -> None:
    """Weight importer run on every assembled model (registered in ``adaptvid.checkpoints``): a model
    with method ``x-clip`` on an ``hf-xclip:`` backbone gets the checkpoint's X-CLIP modules."""
    if isinstance(model.backbone, HFXClipBackbone) and any(name == "x-clip" for name, _ in model.methods):
        backbone = model.backbone
        transfer_xclip_weights(model, backbone.xclip_model, backbone.take_message_modules())


def _source(path_or_repo) -> str:
    """A local folder as an absolute path (the backbone name is what a saved checkpoint reloads); else a hub id."""
    text = str(path_or_repo)
    if os.path.exists(os.path.expanduser(text)):
        return str(Path(text).expanduser().resolve())
    return text


def load_xclip(path_or_repo, num_frames: Optional[int] = None, class_names: Optional[Sequence[str]] = None,
               **options):
    """A VideoModel from a transformers X-CLIP checkpoint (folder written by ``save_pretrained``, or hub id).

    ``num_frames``: frames per clip (default: the checkpoint's; another count resamples the MIT's
    temporal position table linearly). ``class_names``: classes for ``model(video)``; without them
    the model scores free text with ``model.text_logits(video, texts)`` or
    ``model.text_logits(video, input_ids=..., attention_mask=...)``. ``options``: x-clip method
    options (e.g. ``freeze_visual=True``). Returned in eval mode; ``model.train()`` to fine-tune.
    """
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    backbone = create_backbone(f"hf-xclip:{_source(path_or_repo)}")
    config = backbone.xclip_config
    sized = dict(mit_layers=config.vision_config.mit_num_hidden_layers,
                 mit_heads=config.vision_config.mit_num_attention_heads,
                 vsp_layers=config.prompt_layers, vsp_heads=config.prompt_num_attention_heads,
                 vsp_alpha=config.prompt_alpha)
    sized.update(options)
    model = build_model(backbone, "x-clip", class_names=None if class_names is None else list(class_names),
                        num_frames=num_frames or config.vision_config.num_frames, **sized)
    return model.eval()
