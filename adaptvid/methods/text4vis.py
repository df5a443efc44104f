"""Text4Vis (Wu, Sun, Ouyang. Revisiting Classifier: Transferring Vision-Language Models for Video Recognition.
AAAI 2023; official code whwu95/Text4Vis, ``modules/video_clip.py``, ``train.py``,
``configs/k400/k400_train_rgb_vitb-16-f8.yaml``).

The linear classifier is replaced by *fixed* class embeddings: each class name in the template
``"a video of a person {}."`` goes once through the frozen CLIP text tower (``fix_text: True``) and the
result is cached; the visual side is fine-tuned and followed by the same 6-layer ``Transf`` temporal
transformer as ActionCLIP (position table, residual to the input, mean over T). Logits: CLIP's logit
scale (trained with the image tower, as the official optimiser groups it) times the cosine similarity.

Learning rates as in the official config: the fusion head at ``lr`` (5e-5), the image tower and the
logit scale at ``lr x clip_ratio`` = ``backbone_lr`` (5e-6). ``--freeze-visual true`` keeps the image tower
frozen: only the temporal head and the temperature train, and the model is ``cacheable()``
(``adaptvid adapt --cache-features DIR``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..text import TextClassifier
from ._text_heads import train_clip_logit_scale
from .actionclip import transf_fusion
from .registry import register_method

TEXT4VIS_TEMPLATE = "a video of a person {}."   # the official text_prompt.py's single template


@dataclass
class Text4VisConfig:
    fusion_layers: int = field(default=6, metadata={
        "help": "blocks of the temporal transformer over frame embeddings (ActionCLIP/Text4Vis 'Transf': 6)"})
    freeze_visual: bool = field(default=False, metadata={
        "help": "keep the CLIP image tower frozen (only the temporal head and the temperature train)"})
    train_logit_scale: bool = field(default=True, metadata={
        "help": "train CLIP's logit scale (the official code does, at the image tower's rate)"})
    text4vis_template: str = field(default=TEXT4VIS_TEMPLATE, metadata={
        "help": "template of the fixed class texts, one {} for the class name"})

    def __post_init__(self) -> None:
        if self.fusion_layers < 1:
            raise ValueError(f"text4vis fusion_layers must be >= 1, got {self.fusion_layers}")


@register_method(
    "text4vis", Text4VisConfig, family="post-pretraining", claims=("readout",), needs_text=True,
    paper="Wu, Sun, Ouyang. Revisiting Classifier: Transferring Vision-Language Models for Video Recognition. AAAI 2023",
    help="fixed class-text embeddings from the frozen text tower as the classifier; image tower fine-tuned; "
         "6-layer temporal transformer (Transf) over frame embeddings",
)
def apply_text4vis(model, config: Text4VisConfig) -> None:
    text = model.use_text()
    model.set_readout("embed-mean", project=True)
    if not isinstance(model.head, TextClassifier):   # keep a prompt learner's classifier if one was chosen first
        # A frozen text tower: the class embeddings are encoded once and cached (a trained logit scale does not
        # invalidate them).
        model.set_text_classifier((config.text4vis_template,))
    if not config.freeze_visual:
        model.backbone.tower.requires_grad_(True)
    train_clip_logit_scale(model, config.train_logit_scale)   # if the classifier uses CLIP's temperature
    model.set_aggregator(transf_fusion(model.embed_dim, config.fusion_layers, model.num_frames, text.context_length))
