"""ViFi-CLIP (Rasheed, Khattak, Maaz, Khan, Khan. Fine-tuned CLIP Models are Efficient Video Learners. CVPR 2023).

No new module: every frame goes through the CLIP image tower (CLS -> final norm ->
projection), the frame embeddings are averaged over time, and the video is
classified by scaled cosine similarity with the text embeddings of
``"a photo of a {class}."`` under CLIP's own logit scale. Both towers are
fine-tuned end to end.

What the official trainer (``trainers/vificlip.py``, ``USE: both``) trains, and so
what this does:

* the whole image tower;
* the text transformer, positional embedding, final norm and text projection;
* CLIP's logit scale (a parameter of the model it unfreezes, in the "both" mode only);
* *not* the word-embedding table: the official prompt learner embeds the class
  prompts once, under ``no_grad``, into a buffer, so the table never sees a gradient.

There is no new module, so one learning rate (``--lr``) drives both towers: the
image tower is trained at the new modules' rate, not at the reduced ``backbone_lr``.
The bridge-and-prompt second stage (prompts learned on a frozen ViFi-CLIP) is
``adaptvid adapt --init-from <vifi-clip checkpoint> --method coop,vpt`` (see
:mod:`adaptvid.init_from`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..text import PHOTO_TEMPLATE, TextClassifier
from .registry import register_method

NAME = "vifi-clip"


@dataclass
class ViFiCLIPConfig:
    train_text: bool = field(default=True, metadata={
        "help": "fine-tune the CLIP text tower (all but the word embeddings) with the image tower"})
    train_visual: bool = field(default=True, metadata={"help": "fine-tune the CLIP image tower"})

    def __post_init__(self) -> None:
        if not (self.train_text or self.train_visual):
            raise ValueError("vifi-clip with train_text=False and train_visual=False trains nothing; "
                             "that is zero-shot CLIP (adaptvid eval --zero-shot)")


def word_embedding_module(text) -> nn.Module:
    """The text tower's token-embedding table (open_clip: token_embedding; transformers: text_model.embeddings)."""
    table = getattr(text, "token_embedding", None)
    if table is None:
        table = text.text_model.embeddings.token_embedding
    return table


def unfreeze_text(text, train_word_embeddings: bool = False) -> None:
    """Train the text tower; the word-embedding table stays frozen unless asked (ViFi-CLIP never trains it)."""
    text.requires_grad_(True)
    text.logit_scale.requires_grad_(False)   # the caller decides about the temperature
    if not train_word_embeddings:
        word_embedding_module(text).requires_grad_(False)


def use_text_classifier(model, templates) -> None:
    """Classify by the class texts, unless another method (a prompt learner) already set a text classifier."""
    model.set_readout("embed-mean", project=True)
    if not isinstance(model.head, TextClassifier):
        model.set_text_classifier(templates)


@register_method(
    NAME, ViFiCLIPConfig, family="post-pretraining", needs_text=True,
    paper="Rasheed, Khattak, Maaz, Khan, Khan. Fine-tuned CLIP Models are Efficient Video Learners. CVPR 2023",
    help="both CLIP towers fine-tuned; mean of frame embeddings vs. 'a photo of a {}.' class texts; no new parameters",
)
def apply_vifi_clip(model, config: ViFiCLIPConfig) -> None:
    from ._readout import record_readout
    from ._text_heads import train_clip_logit_scale

    text = model.use_text()
    use_text_classifier(model, (PHOTO_TEMPLATE,))
    record_readout(model, NAME, "embed-mean")
    if config.train_visual:
        model.train_tower_parameters(model.backbone.tower)
    if config.train_text:
        unfreeze_text(text)
    # The official "both" mode unfreezes every CLIP parameter, the temperature included; the
    # image-only and text-only variants leave it frozen (and so does a kept classifier that does not use it).
    train_clip_logit_scale(model, config.train_text and config.train_visual)
