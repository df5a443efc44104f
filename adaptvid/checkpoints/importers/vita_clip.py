"""Import the official Vita-CLIP checkpoints (TalalWasim/Vita-CLIP) as ``vita-clip`` models.

The official trainer (``training/train.py`` -> ``training/checkpoint.py:save_checkpoint``) saves
``{'model': DDP(VitaCLIP).state_dict(), 'optimizer', 'lr_sched', 'loss_scaler', 'next_step'}``. ``VitaCLIP``
(``training/VitaCLIP_model.py``) registers both CLIP towers (frozen, in the state dict), the video prompts
and the text prompt learner, so this is a **full-form** import:

=================================================================  ===========================================================
official                                                           adaptvid
=================================================================  ===========================================================
``visual.patch_embed.proj.weight`` (Conv2d)                        the image tower's ``conv1``
``visual.patch_embed.proj.bias`` (see below)                       folded into the patch rows of ``positional_embedding``
``visual.cls_token`` / ``pos_embed`` / ``ln_pre`` / ``ln_post`` /  ``class_embedding`` / ``positional_embedding`` /
``proj``                                                           ``ln_pre`` / ``ln_post`` / ``proj``
``visual.blocks.i.attn.{q,k,v}_proj``, ``out_proj``                ``transformer.resblocks.i.attn.in_proj_*``, ``out_proj``
``visual.blocks.i.{norm1,norm2,mlp.fc1,mlp.fc2}``                  ``...ln_1``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``
``visual.time_embed``                                              ``backbone.before_pre_norm.vita_clip.time_embed``
``visual.global_prompts`` (layers, n, D)                           ``backbone.slots.i.attn_tokens.vita_clip.global_prompts``
``visual.blocks.i.{local_prompts,cls_proj,summary_ln}``            ``backbone.slots.i.attn_tokens.vita_clip.*`` (same names)
``visual.blocks.i.summary_attn_layer.*``                           ``backbone.slots.i.attn_tokens.vita_clip.summary_attn.*``
``textual.*`` (OpenAI CLIP text tower)                             the text tower
``prompt_learner.ctx``                                             ``head.prompt.ctx``
``logit_scale``                                                    ``head.learned_logit_scale``
``prompt_learner.token_prefix`` / ``token_suffix``                 read for the class count; recomputed from the class names
=================================================================  ===========================================================

**The patch-embedding bias.** The official patch embedding is a ``Conv2d`` with a bias, which CLIP's
weights do not have: it stays at its random initialisation (frozen) and is saved. adaptvid's tower keeps
open_clip's bias-free ``conv1``. The bias is added to every patch token before the class token is put in
front and the position embedding is added, so ``conv(x) + b + pos[1:]`` equals ``conv(x) + (pos[1:] + b)``:
the importer adds it to the position embedding's patch rows (not the class row) and the model computes
what the official one does (the test's fixture has a non-zero bias).

Read from the tensors: the number of global prompts, whether local prompts / summary tokens exist, the
text context length and whether it is class-specific (``ctx`` of 3 dimensions), the clip length
(``time_embed``; the official blocks split the batch by it). Not in the tensors: the class names (pass
``class_names=``, in the order of the training class file: the K400 release uses the order of the
official ``data/k400_class_mappings.json``) and the head counts (``heads=`` / ``text_heads=``, default
width // 64, as every CLIP). The text context is read as placed in front of the class name
(``--text_prompt_pos end``, the default and the released script's; the tensors do not record the
position). Checkpoints without text prompt learning (zero-shot evaluation with stored text features) are refused.

The per-block ``cls_proj`` is frozen at its random initialisation in the official code. The imported
model is built as the official recipe trains it (``vita_train_cls_proj=False``): its frozen ``cls_proj``
holds weight and bias as persistent buffers (same names), the checkpoint's values are copied into them,
an adaptvid checkpoint written with ``output=`` stores them next to the trained tensors (so it reloads
exactly), and fine-tuning the imported model leaves them frozen.
"""
from __future__ import annotations

import re

import torch

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .openai_clip import split_openai_clip

NAME = "vita-clip"
_SLOT = "backbone.slots.{}.attn_tokens.vita_clip."
_BLOCK = re.compile(r"^visual\.blocks\.(\d+)\.(.+)$")
_TOWER_RENAME = {"norm1": "ln_1", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                 "attn.out_proj": "attn.out_proj"}
_METHOD_PARTS = re.compile(r"^(local_prompts|cls_proj\.(weight|bias)|summary_ln\.(weight|bias)"
                           r"|summary_attn_layer\.(q|k|v|out)_proj\.(weight|bias))$")
_VISUAL_RENAME = {"visual.patch_embed.proj.weight": "visual.conv1.weight", "visual.cls_token": "visual.class_embedding",
                  "visual.ln_pre.weight": "visual.ln_pre.weight", "visual.ln_pre.bias": "visual.ln_pre.bias",
                  "visual.ln_post.weight": "visual.ln_post.weight", "visual.ln_post.bias": "visual.ln_post.bias",
                  "visual.proj": "visual.proj"}
_TEXT = re.compile(r"^textual\.(token_embedding\.weight|positional_embedding|ln_final\.(weight|bias)|text_projection"
                   r"|transformer\.resblocks\.\d+\..+)$")
_LEARNER = ("prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix")
RELEASES = ("the README's Vita-CLIP-B K400 checkpoint (Google Drive; ViT-B/16, 8 frames, train_scripts/k400_train.sh)",)


def _check_form(state: dict) -> None:
    if "visual.patch_embed.proj.weight" not in state or "visual.time_embed" not in state:
        raise CheckpointImportError(
            "vita-clip: this is not a Vita-CLIP (TalalWasim/Vita-CLIP) checkpoint: it has no "
            "'visual.patch_embed.proj.weight' and 'visual.time_embed'; check --format")
    missing = [k for k in ("prompt_learner.ctx", "logit_scale", "textual.token_embedding.weight") if k not in state]
    if missing:
        raise CheckpointImportError(
            f"vita-clip: the checkpoint has no {missing}: only models trained with --use_text_prompt_learning "
            "(the released ones) can be imported; zero-shot evaluation with stored text features is not supported")


def _positional_embedding(state: dict) -> torch.Tensor:
    """The official position embedding with the patch-embedding bias folded into the patch rows."""
    pos = state["visual.pos_embed"]
    bias = state.get("visual.patch_embed.proj.bias")
    if bias is None:
        return pos
    return torch.cat([pos[:1], pos[1:] + bias.to(pos.dtype)], dim=0)


def _visual_blocks(state: dict, tower: dict, tensors: dict, used: set) -> set:
    """Tower tensors and per-block method tensors of ``visual.blocks.i``; returns the block indices."""
    qkv: dict[tuple[str, str], dict] = {}
    blocks = set()
    for key, value in state.items():
        if (match := _BLOCK.match(key)) is None:
            continue
        block, rest = match.groups()
        blocks.add(int(block))
        if (part := re.match(r"^attn\.(q|k|v)_proj\.(weight|bias)$", rest)) is not None:
            qkv.setdefault((block, part.group(2)), {})[part.group(1)] = value
        elif _METHOD_PARTS.match(rest):
            tensors[_SLOT.format(block) + rest.replace("summary_attn_layer.", "summary_attn.")] = value
        else:
            new = next((new + rest[len(old):] for old, new in _TOWER_RENAME.items() if rest.startswith(old + ".")), None)
            if new is None:
                continue   # not consumed: reported as unexpected
            tower[f"visual.transformer.resblocks.{block}.{new}"] = value
        used.add(key)
    for (block, kind), parts in qkv.items():
        lacking = [f"visual.blocks.{block}.attn.{p}_proj.{kind}" for p in "qkv" if p not in parts]
        if lacking:
            raise CheckpointImportError(f"vita-clip: the image tower lacks {', '.join(lacking)}")
        tower[f"visual.transformer.resblocks.{block}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"])
    return blocks


def _class_count(state: dict, ctx: torch.Tensor) -> int:
    prefix = state.get("prompt_learner.token_prefix")
    if prefix is not None:
        return prefix.shape[0]
    if ctx.ndim == 3:
        return ctx.shape[0]
    raise CheckpointImportError("vita-clip: no 'prompt_learner.token_prefix': the class count is unknown")


def convert(state: dict, options: dict) -> Conversion:
    _check_form(state)
    tensors, used, tower = {}, set(), {}
    for key, new in _VISUAL_RENAME.items():
        if key in state:
            tower[new] = state[key]
            used.add(key)
    tower["visual.positional_embedding"] = _positional_embedding(state)
    used |= {"visual.pos_embed", "visual.patch_embed.proj.bias"} & set(state)
    blocks = _visual_blocks(state, tower, tensors, used)
    for key, value in state.items():
        if _TEXT.match(key):
            tower[key[len("textual."):]] = value
            used.add(key)
    # The tower's own temperature is unused (the Vita classifier has its own): keep the learned one there too.
    tower["logit_scale"] = state["logit_scale"].reshape(())
    tower_spec, rest = split_openai_clip(tower, **{k: options[k] for k in ("heads", "text_heads") if k in options})
    if tower_spec is None or rest:
        raise CheckpointImportError(f"vita-clip: unexpected tower tensors {sorted(rest)[:10]}")

    time_embed = state["visual.time_embed"]
    tensors["backbone.before_pre_norm.vita_clip.time_embed"] = time_embed
    used.add("visual.time_embed")
    num_global = 0
    if "visual.global_prompts" in state:
        prompts = state["visual.global_prompts"]
        if prompts.shape[0] != len(blocks):
            raise CheckpointImportError(f"vita-clip: visual.global_prompts holds {prompts.shape[0]} layers' prompts "
                                        f"for {len(blocks)} blocks")
        num_global = prompts.shape[1]
        for i in range(prompts.shape[0]):
            tensors[_SLOT.format(i) + "global_prompts"] = prompts[i]
        used.add("visual.global_prompts")
    ctx = state["prompt_learner.ctx"]
    tensors["head.prompt.ctx"] = ctx
    tensors["head.learned_logit_scale"] = state["logit_scale"].reshape(())
    used |= {"logit_scale"} | ({*_LEARNER} & set(state))

    method_options = {
        "vita_global_prompts": num_global,
        "vita_local_prompts": "visual.blocks.0.local_prompts" in state,
        "vita_summary_token": "visual.blocks.0.summary_ln.weight" in state,
        "vita_text_ctx": ctx.shape[-2],
        "vita_text_class_specific": ctx.ndim == 3,
        # Frozen, as the official recipe: the checkpoint's random cls_proj goes into the frozen module's buffers,
        # which adaptvid checkpoints store (the seeded draw could not give these values).
        "vita_train_cls_proj": False,
    }
    return Conversion(method=NAME, options=method_options, tensors=tensors, num_classes=_class_count(state, ctx),
                      num_frames=time_embed.shape[0], tower=tower_spec, consumed=used)


register_format(ImportFormat(
    name=NAME,
    help="official Vita-CLIP checkpoint-N.pth: {'model': VitaCLIP.state_dict(), ...}: both CLIP towers, video "
         "prompts, text context (pass class_names in the training class file's order)",
    releases=RELEASES,
    convert=convert,
    source="https://github.com/TalalWasim/Vita-CLIP",
))
