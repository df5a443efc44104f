"""Classification by text: class names x templates -> class embeddings; logits = scaled cosine similarity.

The classifier replaces the linear head of a VideoModel. Its class embeddings
come from the model's text encoder, or from a prompt learner (CoOp-style
context, Efficient-Prompt) that builds the text-side input itself. They are
cached while nothing that produces them changes: a frozen text side encodes
the classes once; a trained one re-encodes them after each optimiser step.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .templates import check_templates

ENCODE_CHUNK = 256   # texts per text-tower call when encoding class prompts


def scaled_cosine(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """``exp(logit_scale) * cos(video, text)``: (B, E) x (C, E) -> (B, C)."""
    return logit_scale.exp() * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()


def encode_class_prompts(text, class_names: Sequence[str], templates: Sequence[str],
                         normalize: bool = True) -> torch.Tensor:
    """Mean over templates of the normalised embeddings of each class, renormalised: (C, E). With
    ``normalize=False``, the plain mean of the raw embeddings (X-CLIP's and X-Pool's heads use those)."""
    sentences = [template.format(name) for name in class_names for template in templates]
    parts = []
    for start in range(0, len(sentences), ENCODE_CHUNK):
        ids, mask = text.tokenize(sentences[start:start + ENCODE_CHUNK])
        parts.append(text(ids, mask))
    embeddings = torch.cat(parts)
    if not normalize:
        return embeddings.reshape(len(class_names), len(templates), -1).mean(dim=1)
    embeddings = F.normalize(embeddings, dim=-1).reshape(len(class_names), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


class TextClassifier(nn.Module):
    """Logits of a video embedding against the class texts.

    ``prompt``: optional module called as ``prompt(text_encoder, class_names) -> (C, E)``
    (a prompt learner); otherwise the class names are filled into ``templates``.
    ``logit_scale``: a fixed temperature (``1/0.07`` for Efficient-Prompt); default CLIP's learned one.
    """

    def __init__(self, text, class_names: Sequence[str], templates: Sequence[str] = ("{}",),
                 prompt: Optional[nn.Module] = None, fixed_logit_scale: Optional[float] = None) -> None:
        super().__init__()
        if not class_names:
            raise ValueError("a text classifier needs the class names (pass class_names=[...] or --classes FILE)")
        self._text = [text]            # a list: the text encoder is the model's, not registered twice
        self.class_names = list(class_names)
        self.templates = check_templates(templates)
        self.prompt = prompt
        self.fixed_logit_scale = fixed_logit_scale
        self._cache: Optional[tuple] = None

    @property
    def text(self):
        return self._text[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_class_names(self, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> None:
        """Score another class set (zero-shot); learned modules (prompt learner, X-CLIP's generator) are kept."""
        if self.prompt is not None and not getattr(self.prompt, "handles_new_classes", True):
            raise ValueError(f"{type(self.prompt).__name__} learns one context per training class, so it cannot "
                             "score other classes; use a shared-context prompt or plain templates")
        if not class_names:
            raise ValueError("no class names given")
        self.class_names = [str(name) for name in class_names]
        if templates is not None:
            self.templates = check_templates(templates)
        self._cache = None

    def logit_scale(self) -> torch.Tensor:
        if self.fixed_logit_scale is not None:
            return torch.tensor(float(self.fixed_logit_scale)).log()
        return self.text.logit_scale

    def _sources(self) -> list[torch.Tensor]:
        """Trainable tensors the class embeddings depend on (the temperature is not one of them)."""
        modules = [self.text] + ([self.prompt] if self.prompt is not None else [])
        scale = self.text.logit_scale
        return [p for m in modules for p in m.parameters() if p.requires_grad and p is not scale]

    def encode_classes(self) -> torch.Tensor:
        """(C, E) class embeddings, computed afresh (subclasses change how; ``class_embeddings`` caches)."""
        if self.prompt is not None:
            return F.normalize(self.prompt(self.text, self.class_names), dim=-1)
        return encode_class_prompts(self.text, self.class_names, self.templates)

    def class_embeddings(self) -> torch.Tensor:
        """``encode_classes()``, re-encoded only when a trainable source or the class set changed."""
        sources = self._sources()
        device = self.text.logit_scale.device
        key = (device, tuple(p._version for p in sources), tuple(id(p) for p in sources), tuple(self.class_names))
        if self._cache is not None and self._cache[0] == key and not (torch.is_grad_enabled() and sources):
            return self._cache[1]
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(sources)):
            embeddings = self.encode_classes()
        self._cache = None if embeddings.requires_grad else (key, embeddings)  # a graph is not kept across steps
        return embeddings

    def logits(self, video: torch.Tensor, texts: torch.Tensor, aux=None) -> torch.Tensor:
        """Scaled cosine similarity of (B, E) video embeddings with (N, E) text embeddings."""
        return scaled_cosine(video, texts, self.logit_scale().to(video.device))

    def forward(self, video: torch.Tensor, aux=None) -> torch.Tensor:
        return self.logits(video, self.class_embeddings(), aux)
