"""Import the official ViFi-CLIP checkpoints (muzairkhattak/ViFi-CLIP) as ``vifi-clip`` models.

The official trainer (``main.py`` -> ``utils/tools.py:epoch_saving``) saves ``{'model': ViFiCLIP.state_dict(),
'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch', 'config'}``. ``ViFiCLIP`` (``trainers/vificlip.py``)
holds both fine-tuned CLIP towers but not CLIP's word-embedding table: its prompt learner embeds the class
prompts once (``"a photo of a {class}."``, under ``no_grad``) into the buffer
``prompt_learner.complete_text_embeddings``, so the table is neither trained nor saved. The import is
therefore **method-only in form**: the user names the base CLIP the model was fine-tuned from
(``backbone="clip"``: ViT-B/16, OpenAI weights, for every released ViFi-CLIP model), which supplies the
word-embedding table and the tokenizer; every other tower tensor is replaced by the checkpoint's:

==========================================================  ==============================================
official ``ViFiCLIP``                                        adaptvid
==========================================================  ==============================================
``image_encoder.*`` (OpenAI CLIP ``VisionTransformer``)     ``backbone.tower.*``
``text_encoder.{transformer,positional_embedding,...}``     ``text.{transformer,positional_embedding,...}``
``logit_scale`` (fine-tuned in the "both" mode)             ``text.logit_scale``
``prompt_learner.complete_text_embeddings`` (C, 77, D)       read for the class count (recomputed from the
                                                             class names and the base table)
==========================================================  ==============================================

Only the fully fine-tuned checkpoints (``PROMPT_MODEL: False``, the zero-shot / base-to-novel /
few-shot / fully-supervised "ViFi-CLIP", "CLIP image-FT" and "CLIP text-FT" rows) are handled; the
"bridge and prompt" checkpoints (``VPT`` / ``VPT_shallow`` / ``prompt_learner.ctx`` tensors) are refused
with a message.
"""
from __future__ import annotations

from .base import CheckpointImportError, Conversion, ImportFormat, register_format

NAME = "vifi-clip"
_TEXT_PARTS = ("transformer.", "positional_embedding", "ln_final.", "text_projection")
_CLASS_PROMPTS = "prompt_learner.complete_text_embeddings"


def convert_vifi_clip(state: dict, options: dict) -> Conversion:
    """Official ViFiCLIP state dict -> Conversion (tower tensors keyed by the adaptvid model's names)."""
    if not any(k.startswith("image_encoder.") for k in state) or not any(k.startswith("text_encoder.") for k in state):
        raise CheckpointImportError(
            "vifi-clip: this is not a ViFi-CLIP (muzairkhattak/ViFi-CLIP) checkpoint: it has no 'image_encoder.*' "
            "and 'text_encoder.*' tensors")
    prompts = sorted(k for k in state if "VPT" in k or k in ("prompt_learner.ctx", "prompt_learner.token_prefix",
                                                             "prompt_learner.token_suffix"))
    if prompts:
        raise CheckpointImportError(
            f"vifi-clip: this is a 'bridge and prompt' checkpoint (PROMPT_MODEL: True; it holds {prompts[:4]}); "
            "only the fully fine-tuned ViFi-CLIP checkpoints are supported by this importer")
    tensors, consumed = {}, set()
    for key, value in state.items():
        if key.startswith("image_encoder."):
            tensors["backbone.tower." + key[len("image_encoder."):]] = value
        elif key.startswith("text_encoder.") and key[len("text_encoder."):].startswith(_TEXT_PARTS):
            tensors["text." + key[len("text_encoder."):]] = value
        elif key == "logit_scale":
            tensors["text.logit_scale"] = value
        elif key != _CLASS_PROMPTS:
            continue   # not consumed: the base reports it as unexpected
        consumed.add(key)
    num_classes = state[_CLASS_PROMPTS].shape[0] if _CLASS_PROMPTS in state else None
    # 32 frames: the "32x224" views of every model in the official README
    return Conversion(method=NAME, options={}, tensors=tensors, num_classes=num_classes,
                      num_frames=int(options.get("num_frames") or 32), tower=None, consumed=consumed)


register_format(ImportFormat(
    name=NAME,
    help="official ViFi-CLIP .pth: {'model': ViFiCLIP.state_dict(), ...}: both fine-tuned towers without the "
         "word-embedding table (pass the base CLIP: backbone='clip')",
    releases=("the fully fine-tuned models of the README's zero-shot (K400), base-to-novel, few-shot and "
              "fully-supervised tables (ViFi-CLIP, CLIP image-FT, CLIP text-FT rows; SharePoint links)",),
    convert=convert_vifi_clip,
    source="https://github.com/muzairkhattak/ViFi-CLIP",
))
