"""The text classifier of ActionCLIP (and Singularity's text option), the video encoder of the text-conditioned
heads, and the guards the text-side heads share.

* :class:`SampledTemplateClassifier` (ActionCLIP): in training each class is encoded with one template
  drawn at random per step (torch's RNG), in the spirit of ActionCLIP's per-sample random template; in
  eval the class embedding is the mean over all templates. With a trained text tower this keeps a step's
  text cost at one prompt per class instead of one per class and template.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..text import TextClassifier


class FrameEmbeddingsEncoder(nn.Module):
    """Parameter-free video encoder of the text-conditioned heads (X-Pool, CLIP4Clip's tightTransf): the frame
    embeddings through the model's aggregator (its text-free fallback) as the video embedding, and the frame
    embeddings themselves as ``aux`` for the classifier that scores every text against them."""

    head_projection = True   # the readout uses backbone.head on every frame's CLS, projected (methods/_readout.py)

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.out_dim = embed_dim

    def forward(self, video: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor]:
        frames = model.encode_frames(video)
        return model.aggregator(frames), frames


def text_methods(model) -> list[str]:
    """The applied methods that use the CLIP text tower (the ones that may have set the text classifier)."""
    from .registry import get_method

    return [name for name, _ in getattr(model, "methods", []) if get_method(name).needs_text]


def check_no_text_classifier(model, method: str, detail: str = "") -> None:
    """Two methods cannot both set the model's text classifier (the second would silently replace the first)."""
    if isinstance(model.head, TextClassifier):
        owners = ", ".join(text_methods(model)) or "another method"
        raise ValueError(f"{method} sets its own text classifier{detail} but {owners} already set one; two methods "
                         "cannot both own the classifier: choose one of them")


def check_linear_readout(model, method: str, width: int) -> None:
    """A readout whose embedding is not in CLIP's joint space (a decoder's, a side network's) cannot feed a
    text classifier that an earlier method set: refuse with the reason instead of a width mismatch."""
    head = model.head
    if isinstance(head, TextClassifier) and width != head.text.embed_dim:
        owners = ", ".join(text_methods(model)) or "another method"
        raise ValueError(f"{method} gives {width}-wide video embeddings, outside CLIP's {head.text.embed_dim}-wide "
                         f"joint space, so they cannot be scored by the text classifier of {owners}; {method} "
                         "classifies with a linear head: choose one of them")


def uses_clip_logit_scale(model) -> bool:
    """Whether the model's classifier scales its logits by the text tower's ``logit_scale``."""
    head = model.head
    return isinstance(head, TextClassifier) and head.logit_scale() is head.text.logit_scale


def train_clip_logit_scale(model, train: bool) -> None:
    """Train CLIP's temperature (``text.logit_scale``) when asked and when the classifier uses it: a kept
    classifier with its own temperature (Vita-CLIP's) or a fixed one would leave it a dead weight."""
    model.use_text().logit_scale.requires_grad_(bool(train) and uses_clip_logit_scale(model))


class SampledTemplateClassifier(TextClassifier):
    def class_embeddings(self) -> torch.Tensor:
        if (not (self.training and torch.is_grad_enabled() and self._sources()) or len(self.templates) == 1
                or self.prompt is not None):   # a prompt learner (e.g. coop, chosen with it) makes the prompts
            return super().class_embeddings()
        choice = torch.randint(len(self.templates), (len(self.class_names),))
        sentences = [self.templates[int(k)].format(name) for name, k in zip(self.class_names, choice)]
        ids, mask = self.text.tokenize(sentences)
        return F.normalize(self.text(ids, mask), dim=-1)

