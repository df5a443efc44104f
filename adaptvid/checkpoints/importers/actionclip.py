"""Import the official ActionCLIP checkpoints (sallymmx/ActionCLIP) as ``actionclip`` models.

The official trainer (``train.py`` -> ``utils/saving.py``) saves ``{'epoch', 'model_state_dict':
CLIP.state_dict(), 'fusion_model_state_dict': DataParallel(visual_prompt).state_dict(),
'optimizer_state_dict'}``: both fine-tuned CLIP towers (OpenAI-CLIP layout, the word embeddings and the
logit scale included) and the "post-network prompt" fusion module, so this is a full-form import.
``visual_prompt('Transf')`` (``modules/Visual_Prompt.py``, the K400 configs' ``sim_header``) maps onto
adaptvid's ``actionclip`` aggregator (``adaptvid/methods/actionclip.py``) name for name:

=====================================================  ==============================================
official (``fusion_model_state_dict``, ``module.``)     adaptvid
=====================================================  ==============================================
``frame_position_embeddings.weight`` (77, E)            ``aggregator.position.weight``
``transformer.resblocks.j.{ln_1,attn,ln_2,mlp}.*``     ``aggregator.blocks.j.{ln_1,attn,ln_2,mlp}.*``
=====================================================  ==============================================

The fusion heads are ``text width // 64`` in the official code and ``embed dim // 64`` in adaptvid (equal
for every CLIP model); the other ``sim_header`` values (``meanP``, ``LSTM``, ``Conv_1D``, ``Transf_cls``)
are refused. The two state dicts may reach ``convert`` nested under their names (as saved) or flattened
as ``model_state_dict.<key>`` / ``fusion_model_state_dict.<key>``; ``epoch`` / optimizer entries are ignored.
"""
from __future__ import annotations

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .openai_clip import split_openai_clip

NAME = "actionclip"
MODEL, FUSION = "model_state_dict", "fusion_model_state_dict"


def _flat(state: dict) -> dict:
    """The two saved state dicts as one flat mapping ``model_state_dict.<key>`` / ``fusion_model_state_dict.<key>``
    (whether they arrive nested under their names or already flattened); bookkeeping entries dropped."""
    flat = {}
    for name, value in state.items():
        if name in (MODEL, FUSION) and isinstance(value, dict):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        elif hasattr(value, "shape"):
            flat[name] = value
    return flat


def _inner(flat: dict, name: str) -> dict:
    """``{key without 'module.': official flat key}`` of one of the two state dicts."""
    out = {}
    for key in flat:
        if key.startswith(name + "."):
            inner = key[len(name) + 1:]
            out[inner[len("module."):] if inner.startswith("module.") else inner] = key
    return out


def convert_actionclip(state: dict, options: dict) -> Conversion:
    """Official ActionCLIP checkpoint -> Conversion (full form: CLIP towers + the Transf fusion module)."""
    flat = _flat(state)
    clip, fusion = _inner(flat, MODEL), _inner(flat, FUSION)
    if not clip:
        raise CheckpointImportError(
            f"actionclip: an official ActionCLIP checkpoint holds '{MODEL}' and '{FUSION}' (utils/saving.py); "
            f"this one has {sorted(state)[:6]}")
    if "frame_position_embeddings.weight" not in fusion or not any(k.startswith("transformer.") for k in fusion):
        kind = "no parameters (sim_header meanP)" if not fusion else f"keys {sorted(fusion)[:4]}"
        raise CheckpointImportError(
            "actionclip: only the 'Transf' fusion (sim_header: Transf, as in the official K400 configs) is supported; "
            f"this fusion model has {kind}")
    tower, rest = split_openai_clip({k: flat[key] for k, key in clip.items()},
                                    **({"heads": options["heads"]} if "heads" in options else {}))
    if tower is None:
        raise CheckpointImportError(f"actionclip: '{MODEL}' holds no CLIP image tower ('visual.conv1.weight', ...)")
    tensors, used = {}, {clip[k] for k in clip if k not in rest}
    for key, official in fusion.items():
        if key == "frame_position_embeddings.weight":
            tensors["aggregator.position.weight"] = flat[official]
        elif key.startswith("transformer.resblocks."):
            tensors["aggregator.blocks." + key[len("transformer.resblocks."):]] = flat[official]
        else:
            continue
        used.add(official)
    # Keys inside a nested state dict are invisible to the base's strict check: report them here.
    unused = sorted(set(flat) - used)
    if unused:
        raise CheckpointImportError(f"actionclip: {len(unused)} unexpected key(s) in the checkpoint: {unused[:10]}; "
                                    "it is not an official ActionCLIP 'Transf' checkpoint of this layout")
    layers = len({k.split(".")[2] for k in fusion if k.startswith("transformer.resblocks.")})
    return Conversion(method=NAME, options={"fusion_layers": layers}, tensors=tensors,
                      num_frames=int(options.get("num_frames") or 8), tower=tower, consumed=set(state))


register_format(ImportFormat(
    name=NAME,
    help="official ActionCLIP .pt: {'model_state_dict': CLIP, 'fusion_model_state_dict': visual_prompt('Transf'), ...} "
         "(full form)",
    releases=("the K400 ViT-B/32 8f, ViT-B/16 8f / 16f / 32f models of the README (Baidu / Google Drive links; "
              "model_best.pt as the trainer names it)",),
    convert=convert_actionclip,
    source="https://github.com/sallymmx/ActionCLIP",
))
