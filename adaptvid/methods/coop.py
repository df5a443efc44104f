"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022) for video classification.

CLIP stays frozen (both towers); only the text context is learned: ``ctx_tokens`` vectors replace the
words of the class prompt (``"X X ... X name."``) and the class embeddings come from the frozen text
tower. Logits are CLIP's cosine similarity with CLIP's own (frozen) temperature; the video embedding
is the mean of the frame embeddings. ``text_prompt_depth`` 'deep' or > 1 adds per-block deep text prompts
(MaPLe's independent-prompt baseline). See ``adaptvid.text.prompt_learner``.

With other methods, in either order: coop owns the classifier's text side. If an earlier method already
built a ``TextClassifier`` (e.g. ViFi-CLIP), coop attaches its context to it (its templates are then
unused); if that classifier already has a learned prompt (Efficient-Prompt, Vita-CLIP), coop refuses:
two learned text contexts. Otherwise it replaces the linear head by a text classifier. A readout without
the CLIP projection (ST-Adapter's) keeps its pooling but gets the projection, because the class texts
live in the joint space (``VideoModel.set_readout`` keeps it for a later method too: ``"coop,st-adapter"``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..text import TextClassifier
from ..text.prompt_learner import POSITIONS, TextPromptLearner
from .registry import register_method

logger = logging.getLogger("adaptvid")


@dataclass
class CoOpConfig:
    ctx_tokens: int = field(default=16, metadata={
        "help": "learned context tokens in the class prompt (CoOp: 16; ignored when ctx_init gives a phrase)"})
    ctx_position: str = field(default="front", metadata={
        "help": "where the context goes: 'front' (X X X name.), 'end' (name X X X.) or 'middle' (X X name X X.)"})
    ctx_class_specific: bool = field(default=False, metadata={
        "help": "one context per class (CSC) instead of one shared by all classes; CSC cannot score unseen names"})
    ctx_init: str = field(default="", metadata={
        "help": "start the context from this phrase's word embeddings, e.g. 'a video of a' (its token count sets "
                "the number of context tokens); empty: N(0, 0.02)"})
    text_prompt_depth: str = field(default="shallow", metadata={
        "help": "text blocks with their own learned context: 'shallow' (= 1, CoOp), 'deep' (every block, "
                "MaPLe/IVLP; ViFi-CLIP's prompting stage) or a number of blocks"})

    def __post_init__(self) -> None:
        if self.ctx_position not in POSITIONS:
            raise ValueError(f"coop ctx_position must be one of {POSITIONS}, got {self.ctx_position!r}")
        if self.ctx_tokens < 1 and not self.ctx_init:
            raise ValueError(f"coop ctx_tokens must be >= 1, got {self.ctx_tokens}")
        self.text_prompt_depth = str(self.text_prompt_depth).strip().lower()
        depth = self.text_prompt_depth
        if depth not in ("shallow", "deep") and not (depth.isdigit() and int(depth) >= 1):
            raise ValueError(f"coop text_prompt_depth must be 'shallow', 'deep' or a number of blocks >= 1, got {depth!r}")

    def blocks(self, text_depth: int) -> int:
        """The number of text blocks that get their own context, on a text tower ``text_depth`` deep."""
        return {"shallow": 1, "deep": text_depth}.get(self.text_prompt_depth) or int(self.text_prompt_depth)


def attach_text_prompt(model, learner) -> None:
    """Make ``learner`` the text side of the model's classifier (shared by coop and vita-clip)."""
    if model.decoder is None and model.video_encoder is None and not model.project:
        logger.info("%s: switching the readout to the projected embedding (pool %r kept): the class texts live "
                    "in CLIP's joint space", type(learner).__name__, model.pool)
        model.set_readout(model.pool, project=True)
    head = model.head
    if isinstance(head, TextClassifier):
        if head.prompt is not None:
            raise ValueError(f"the model's text classifier already has a learned prompt ({type(head.prompt).__name__}); "
                             "two methods cannot both learn the text context — choose one of them")
        head.prompt = learner
        head._cache = None
    else:
        model.set_text_classifier(prompt=learner)


def make_learner(model, n_ctx: int, position: str, class_specific: bool, init: str, depth: int) -> TextPromptLearner:
    text = model.use_text()
    if model.class_names is None:
        raise ValueError("learned text prompts need the class names: build_model(..., class_names=[...]) "
                         "or adaptvid adapt --classes FILE")
    learner = TextPromptLearner(text, model.class_names, n_ctx=n_ctx, position=position,
                                class_specific=class_specific, init=init or None, depth=depth)
    return learner.to(text.logit_scale.device)


@register_method(
    "coop", CoOpConfig, family="prompt tuning", needs_text=True, stage="prompt",
    paper="Zhou, Yang, Loy, Liu. Learning to Prompt for Vision-Language Models (CoOp), IJCV 2022",
    help="learned text context in the class prompts; CLIP frozen, cosine-similarity classifier",
)
def apply_coop(model, config: CoOpConfig) -> None:
    learner = make_learner(model, config.ctx_tokens, config.ctx_position, config.ctx_class_specific,
                           config.ctx_init, config.blocks(model.use_text().depth))
    attach_text_prompt(model, learner)
