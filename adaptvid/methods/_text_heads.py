"""The text classifier of ActionCLIP (and Singularity's text option) and a guard the text-side heads share.

* :class:`SampledTemplateClassifier` (ActionCLIP): in training each class is encoded with one template
  drawn at random per step (torch's RNG), in the spirit of ActionCLIP's per-sample random template; in
  eval the class embedding is the mean over all templates. With a trained text tower this keeps a step's
  text cost at one prompt per class instead of one per class and template.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..text import TextClassifier


def check_no_text_classifier(model, method: str) -> None:
    """Two methods cannot both set the model's text classifier (the second would silently replace the first)."""
    if isinstance(model.head, TextClassifier):
        raise ValueError(f"{method} sets its own text classifier but another method already set one; choose one of them")


class SampledTemplateClassifier(TextClassifier):
    def class_embeddings(self) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and self._sources()) or len(self.templates) == 1:
            return super().class_embeddings()
        choice = torch.randint(len(self.templates), (len(self.class_names),))
        sentences = [self.templates[int(k)].format(name) for name, k in zip(self.class_names, choice)]
        ids, mask = self.text.tokenize(sentences)
        return F.normalize(self.text(ids, mask), dim=-1)

