"""ATP, the atemporal probe (Buch, Eyzaguirre, Gaidon, Wu, Fei-Fei, Niebles. Revisiting the "Video" in
Video-Language Understanding. CVPR 2022; official code StanfordVL/atp-video-language, ``src/atp.py``).

A diagnostic: how much of a task can be solved from *one* well-chosen frame? Over the frozen CLIP frame
embeddings of a clip, a small transformer scores the T frames and exactly one frame's embedding —
unmodified — becomes the video embedding:

* ``Linear(E, d)`` embedding, times ``sqrt(d)``, plus a learned "visual" modality vector, dropout 0.1;
* a 2-layer post-LN ``nn.TransformerEncoder`` (d = 128, 2 heads, feed-forward 128, ReLU, dropout 0.1)
  **without position embeddings**: the probe is atemporal by construction (it sees a set, not a sequence);
* ``Linear(d, 1)`` scores; training selects with a straight-through Gumbel-softmax (hard one-hot forward,
  soft gradient), evaluation with the argmax.

The selected embedding goes to a linear head (default) or, with ``--atp-classifier text``, to frozen CLIP
class-text embeddings (``DEFAULT_TEMPLATES``) under CLIP's logit scale, so that only the selector trains —
the paper's probe setting, where the candidates are text. Compare with ``frozen`` (the mean of all frames,
linear head) and with a temporal method on the same data: ATP near the full model means the benchmark
is answerable from a single frame. The backbone is untouched, so training can run from cached features.

Differences from the official module: the modality table has only the visual row (vision-only probe;
the official table has 5 rows, of which a vision-only run uses one), and there is no text query input.
``model.aggregator.last_index`` holds the frames chosen in the latest forward (for inspection).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_method

CLASSIFIERS = ("linear", "text")


@dataclass
class ATPConfig:
    atp_layers: int = field(default=2, metadata={"help": "transformer layers of the frame selector (official 2)"})
    atp_width: int = field(default=128, metadata={"help": "width d of the selector (official 128)"})
    atp_heads: int = field(default=2, metadata={"help": "attention heads of the selector (official 2)"})
    atp_ff: int = field(default=128, metadata={"help": "feed-forward width of the selector (official 128)"})
    atp_dropout: float = field(default=0.1, metadata={"help": "dropout in the selector (official 0.1)"})
    atp_classifier: str = field(default="linear", metadata={
        "help": "'linear': a trained linear head on the selected frame; 'text': frozen CLIP class-text "
                "embeddings (only the selector trains; needs a CLIP backbone and class names)"})

    def __post_init__(self) -> None:
        if self.atp_classifier not in CLASSIFIERS:
            raise ValueError(f"atp_classifier must be one of {CLASSIFIERS}, got {self.atp_classifier!r}")
        if self.atp_layers < 1 or self.atp_heads < 1 or self.atp_width % self.atp_heads:
            raise ValueError(f"atp needs atp_layers >= 1 and atp_heads dividing atp_width, got "
                             f"{self.atp_layers}, {self.atp_heads}, {self.atp_width}")
        if not 0 <= self.atp_dropout < 1:
            raise ValueError(f"atp_dropout must be in [0, 1), got {self.atp_dropout}")


class ATPSelector(nn.Module):
    """``(B, T, E)`` frame embeddings -> ``(B, E)``: the embedding of one selected frame."""

    def __init__(self, embed_dim: int, width: int = 128, layers: int = 2, heads: int = 2, ff: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.width = width
        self.embedding = nn.Linear(embed_dim, width)
        self.modality = nn.Embedding(1, width)      # the "visual embedding" modality row
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(width, heads, ff, dropout, activation="relu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.score = nn.Linear(width, 1)
        self.last_index: Optional[torch.Tensor] = None

    def scores(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T) selection logits; no position information, so they follow the frames if they are permuted."""
        h = self.embedding(frames) * math.sqrt(self.width) + self.modality.weight[0]
        return self.score(self.encoder(self.dropout(h))).squeeze(-1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        logits = self.scores(frames)
        if self.training:
            # Straight-through: the forward uses a hard one-hot draw, the backward the soft Gumbel weights.
            mask = F.gumbel_softmax(logits, tau=1.0, hard=True, dim=1)
            self.last_index = mask.argmax(dim=1).detach()
            return (mask.unsqueeze(-1) * frames).sum(dim=1)
        index = logits.argmax(dim=1)
        self.last_index = index
        return frames[torch.arange(frames.shape[0], device=frames.device), index]


def check_frames_to_select(model, train_frames: Optional[int] = None) -> None:
    """ATP learns to choose among a clip's frames: a training-frame subsampler that leaves fewer than two
    (Singularity's ``train_frames=1``) would leave the selector nothing to choose, so it would never learn.

    From atp (``train_frames`` None): checks the model's subsampler; from singularity (its ``train_frames``):
    checks for an ATP selector already in place."""
    if train_frames is None:
        train_frames = getattr(model.train_frame_selector, "k", None)
        if train_frames is None:
            return
    elif not isinstance(model.aggregator, ATPSelector):
        return
    if train_frames < 2:
        raise ValueError(f"atp's selector learns to choose one of a clip's frames, but singularity trains on "
                         f"{train_frames} frame(s) per clip, so the selector would get no gradient; use "
                         "train_frames >= 2 or choose one of them")


@register_method(
    "atp", ATPConfig, family="hybrid", claims=("readout",),
    paper="Buch, Eyzaguirre, Gaidon, Wu, Fei-Fei, Niebles. Revisiting the \"Video\" in Video-Language "
          "Understanding. CVPR 2022",
    help="diagnostic atemporal probe: a small transformer picks one frozen frame embedding per clip (Gumbel "
         "straight-through in training, argmax at eval); linear or text classifier on it; cacheable",
)
def apply_atp(model, config: ATPConfig) -> None:
    check_frames_to_select(model)
    # The selector reads per-frame embeddings: embed-mean, with the projection the earlier methods chose
    # (the registry applies atp after the methods that set the tower's readout, e.g. st-adapter's).
    if model.pool != "embed-mean":
        model.set_readout("embed-mean", model.project)
    if config.atp_classifier == "text":
        from ..text import DEFAULT_TEMPLATES, TextClassifier

        model.set_readout("embed-mean", project=True)
        if not isinstance(model.head, TextClassifier):
            model.set_text_classifier(DEFAULT_TEMPLATES)
    model.set_aggregator(ATPSelector(model.embed_dim, config.atp_width, config.atp_layers, config.atp_heads,
                                     config.atp_ff, config.atp_dropout))
