"""ActionCLIP (Wang, Xing, Liu. ActionCLIP: A New Paradigm for Video Action Recognition. arXiv 2109.08472, 2021;
official code sallymmx/ActionCLIP, ``modules/Visual_Prompt.py``, ``configs/k400/k400_train.yaml``).

Recognition as video-text matching: both CLIP towers are fine-tuned and the class texts are written with
hand-made prompt templates. The video side is the paper's "post-network prompt" ``Transf`` (its K400
default): a 6-layer pre-LN temporal transformer over the projected frame embeddings with a learned
position table ``nn.Embedding(77, E)`` (the first T rows used), QuickGELU, LayerNorm eps 1e-12,
BERT-style init, and the raw frame embeddings added back before the mean over time
(:class:`~adaptvid.methods._temporal.TemporalTransformer` with ``residual=True``). Logits: CLIP's own
learned logit scale times the cosine similarity.

Learning rates as in the official AdamW setup: both towers (and the logit scale) at the base rate, the
fusion module at 10x. In adaptvid the towers train at ``--backbone-lr`` and the fusion module is a new
module at ``--lr``; the recipes set ``lr = 10 x backbone_lr`` (5e-5 / 5e-6).

Differences from the official training, on purpose: the loss is cross-entropy over all classes (the
official code uses a symmetric KL loss between the videos and the texts of the batch); in training
each class is encoded with one template drawn at random per step (official: one random template per
video), at evaluation with the mean of all templates' embeddings (official: the mean of the
per-template softmax scores). The templates (``ACTION_TEMPLATES``) are adaptvid's own, written in the
spirit of the paper's 16, not copied from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ._temporal import TemporalTransformer
from ._text_heads import SampledTemplateClassifier, train_clip_logit_scale
from .registry import register_method

# adaptvid's own templates (phrasings of "a person doing <action>" in a video), not the paper's list.
ACTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a video of a person {}.",
    "a clip showing {}.",
    "someone is {}.",
    "the human action of {}.",
    "{}, a kind of human activity.",
    "a recording of people {}.",
    "a person doing {}.",
    "an action called {}.",
    "footage of somebody {}.",
    "we see a person {} in this clip.",
    "which action is this? {}.",
    "a man is {}.",
    "a woman is {}.",
    "an example of the action {}.",
    "a short video: {}.",
)


@dataclass
class ActionCLIPConfig:
    fusion_layers: int = field(default=6, metadata={
        "help": "blocks of the temporal transformer over frame embeddings (ActionCLIP/Text4Vis 'Transf': 6)"})
    train_text: bool = field(default=True, metadata={"help": "fine-tune the CLIP text tower (ActionCLIP trains both)"})
    train_visual: bool = field(default=True, metadata={"help": "fine-tune the CLIP image tower"})
    sample_templates: bool = field(default=True, metadata={
        "help": "in training encode each class with one randomly drawn template per step (eval: mean of all)"})

    def __post_init__(self) -> None:
        if self.fusion_layers < 1:
            raise ValueError(f"actionclip fusion_layers must be >= 1, got {self.fusion_layers}")


def transf_fusion(width: int, layers: int, num_frames: int, context_length: int = 77) -> TemporalTransformer:
    """ActionCLIP's / Text4Vis's ``Transf`` head: width/64 heads, positions from a 77-row table, residual."""
    return TemporalTransformer(width, layers, max(1, width // 64), num_frames, num_positions=max(context_length, num_frames),
                               residual=True, init="bert", ln_eps=1e-12)


@register_method(
    "actionclip", ActionCLIPConfig, family="post-pretraining", claims=("readout",), needs_text=True,
    paper="Wang, Xing, Liu. ActionCLIP: A New Paradigm for Video Action Recognition. arXiv 2109.08472, 2021",
    help="both CLIP towers fine-tuned; 6-layer temporal transformer (Transf) over frame embeddings at the new-module "
         "lr; class texts from action templates; CLIP's logit scale",
)
def apply_actionclip(model, config: ActionCLIPConfig) -> None:
    from ..text import TextClassifier

    text = model.use_text()
    model.set_readout("embed-mean", project=True)
    if not isinstance(model.head, TextClassifier):   # keep a prompt learner's classifier if one was chosen first
        model.set_text_classifier(ACTION_TEMPLATES, classifier_cls=SampledTemplateClassifier if config.sample_templates
                                  else TextClassifier)
    if config.train_visual:
        model.backbone.tower.requires_grad_(True)    # trained at backbone_lr (the official base rate)
    if config.train_text:
        text.requires_grad_(True)                    # all of it, word embeddings and logit scale included
        train_clip_logit_scale(model, True)          # (unless a kept classifier has its own temperature)
    model.set_aggregator(transf_fusion(model.embed_dim, config.fusion_layers, model.num_frames, text.context_length))
