"""X-Pool (Gorti, Vouitsis, Ma, Golestan, Volkovs, Garg, Yu: "X-Pool: Cross-Modal Language-Video
Attention for Text-Video Retrieval", CVPR 2022; official code layer6ai-labs/xpool, ``modules/transformer.py``
(``MultiHeadedAttention``, ``Transformer``), ``model/clip_transformer.py``, ``modules/metrics.py``
(``sim_matrix_training``), ``modules/loss.py`` and ``config/all_config.py``).

Text-conditioned pooling: for each caption t and video v, the caption's CLIP embedding is the query of an
attention over v's CLIP frame embeddings (keys and values), so every (text, video) pair gets its own
pooled video embedding. The head (:class:`XPoolHead`, the official ``Transformer``) is::

    t, f   = LN1(t), LN1(f)                          # one shared LayerNorm for text and frames
    a      = out_proj(softmax_T(q_proj(t) . k_proj(f) / sqrt(d)) v_proj(f))   # 1 head (num_mha_heads)
    a      = LN2(a)
    pooled = LN3(a + dropout(linear_proj(a)))        # dropout 0.3 (transformer_dropout)

with every ``*proj`` weight initialised to the identity and every bias to zero (the official
``_init_parameters``). The inputs are the raw (unnormalised) CLIP embeddings; the score of a pair is
``cos(t, pooled(t, v))`` with the raw text embedding, scaled by CLIP's ``exp(logit_scale)`` in the loss
(symmetric InfoNCE over the batch). Both CLIP towers are fine-tuned (official ``clip_lr`` 1e-6: here
``backbone_lr``) and the head trains at ``lr`` (official ``noclip_lr`` 1e-5).

New parameters on CLIP ViT-B/32 (E = 512, 1 head): q/k/v/out/linear projections 5 x 262,656 + three
LayerNorms 3 x 1,024 = 1,316,352, the same as the official ``Transformer(config)`` with ``embed_dim=512``.

**How it sits in a VideoModel** (which cannot pool per text by itself):

* ``model.aggregator`` is the :class:`XPoolHead` (set with ``set_aggregator``). Called as an aggregator,
  ``head(frames (B, T, E), frame_mask=None) -> (B, E)`` is the *text-agnostic fallback*: the (masked) mean
  of the frame embeddings, the official ``avg`` baseline. So ``model.encode_video(video)`` and
  ``readout(backbone_features(...))`` still give one embedding per video (the mean), never an error. It
  has ``text_conditioned = True``; a retrieval task checks that flag and calls
  ``model.aggregator.score(model.encode_frames(video), text_embeddings, logit_scale)`` -> ``(N_texts,
  N_videos)`` instead of comparing ``encode_video`` with the texts. ``pool(frames, texts)`` gives the
  pooled embeddings ``(N, V, E)``. Both work in chunks of ``text_chunk`` texts (the frames' keys and
  values are computed once), so memory is bounded by ``text_chunk x V x E`` per step; both take an
  optional ``frame_mask`` ``(V, T)`` (True = real frame), which removes padded frames from the keys.
* ``model.video_encoder`` is a parameter-free :class:`FrameEmbeddingsEncoder` that returns ``(mean, frames)``:
  the frame embeddings travel as the classifier's ``aux``, so ``model.text_logits(video, texts)`` and, with
  class names, ``model(video)`` are X-Pool scores (each text pools the video itself), not the mean's.
  ``model.head`` is an :class:`XPoolClassifier`, set with or without class names (without them
  ``model(video)`` explains that there are no classes; ``adaptvid.set_classes`` adds them). Because of the
  video encoder the model is not ``cacheable()``.

Differences from the official code: the frame mask (the official code samples a fixed number of frames
and has none); the text chunking is adaptvid's (the official evaluation pools every text against every
video of a batch of video ids at once); the per-pair cosine takes the raw text embedding exactly as the
official ``sim_matrix_training``; with class names, a class's text is the raw mean of its template
embeddings (one template, ``class_template``, by default: the embedding itself).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..text import TextClassifier, check_templates, encode_class_prompts
from ._text_heads import FrameEmbeddingsEncoder, check_no_text_classifier
from .registry import register_method


@dataclass
class XPoolConfig:
    xpool_heads: int = field(default=1, metadata={"help": "attention heads of the text-conditioned pooling (X-Pool: 1)"})
    xpool_dropout: float = field(default=0.3, metadata={
        "help": "dropout on the pooling's linear branch (X-Pool's transformer_dropout: 0.3)"})
    xpool_text_chunk: int = field(default=128, metadata={
        "help": "texts pooled at once when scoring (bounds memory at chunk x videos x embed dim)"})
    train_visual: bool = field(default=True, metadata={"help": "fine-tune the CLIP image tower (X-Pool trains both)"})
    train_text: bool = field(default=True, metadata={"help": "fine-tune the CLIP text tower"})
    class_template: str = field(default="{}", metadata={
        "help": "how a class name becomes its text when class names are given (retrieval has none)"})

    def __post_init__(self) -> None:
        if self.xpool_heads < 1:
            raise ValueError(f"x-pool xpool_heads must be >= 1, got {self.xpool_heads}")
        if not 0.0 <= self.xpool_dropout < 1.0:
            raise ValueError(f"x-pool xpool_dropout must be in [0, 1), got {self.xpool_dropout}")
        if self.xpool_text_chunk < 1:
            raise ValueError(f"x-pool xpool_text_chunk must be >= 1, got {self.xpool_text_chunk}")
        check_templates(self.class_template)


class XPoolAttention(nn.Module):
    """Texts (queries) attending over each video's frames (keys, values): the official ``MultiHeadedAttention``."""

    def __init__(self, embed_dim: int, heads: int = 1) -> None:
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"x-pool: {heads} heads do not divide the embedding width {embed_dim}")
        self.embed_dim, self.heads, self.head_dim = embed_dim, heads, embed_dim // heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def keys_values(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, T, E) normalised frames -> keys and values (V, T, heads, head_dim), computed once for all texts."""
        v, t = frames.shape[:2]
        shape = (v, t, self.heads, self.head_dim)
        return self.k_proj(frames).reshape(shape), self.v_proj(frames).reshape(shape)

    def forward(self, texts: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, E) normalised texts -> (N, V, E)."""
        n = texts.shape[0]
        q = self.q_proj(texts).reshape(n, self.heads, self.head_dim)
        logits = torch.einsum("nhd,vthd->nvht", q, keys) / math.sqrt(self.head_dim)
        if frame_mask is not None:
            logits = logits.masked_fill(~frame_mask[None, :, None, :], float("-inf"))
        weights = logits.softmax(dim=-1)
        pooled = torch.einsum("nvht,vthd->nvhd", weights, values).reshape(n, keys.shape[0], self.embed_dim)
        return self.out_proj(pooled)


class XPoolHead(nn.Module):
    """X-Pool's text-conditioned pooling over CLIP frame embeddings (see the module docstring).

    ``forward(frames (B, T, E), frame_mask=None) -> (B, E)``: the text-agnostic fallback (mean of the
    valid frames), so the head can be a ``VideoModel`` aggregator; ``pool`` / ``score`` are the
    text-conditioned X-Pool.
    """

    text_conditioned = True

    def __init__(self, embed_dim: int, heads: int = 1, dropout: float = 0.3, text_chunk: int = 128) -> None:
        super().__init__()
        self.embed_dim, self.text_chunk = embed_dim, text_chunk
        self.cross_attn = XPoolAttention(embed_dim, heads)
        self.linear_proj = nn.Linear(embed_dim, embed_dim)
        self.layer_norm1 = nn.LayerNorm(embed_dim)
        self.layer_norm2 = nn.LayerNorm(embed_dim)
        self.layer_norm3 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        for name, param in self.named_parameters():    # the official _init_parameters: identity weights, zero biases
            if "proj" in name:
                if name.endswith("weight"):
                    nn.init.eye_(param)
                else:
                    nn.init.zeros_(param)

    # -- inputs ------------------------------------------------------------------
    def _check(self, frames: torch.Tensor, texts: Optional[torch.Tensor], frame_mask: Optional[torch.Tensor]):
        if frames.ndim != 3 or frames.shape[-1] != self.embed_dim:
            raise ValueError(f"x-pool expects frame embeddings (V, T, {self.embed_dim}), got {tuple(frames.shape)}")
        if texts is not None and (texts.ndim != 2 or texts.shape[-1] != self.embed_dim):
            raise ValueError(f"x-pool expects text embeddings (N, {self.embed_dim}), got {tuple(texts.shape)}")
        if frame_mask is None:
            return None
        if tuple(frame_mask.shape) != tuple(frames.shape[:2]):
            raise ValueError(f"frame_mask must be (V, T) = {tuple(frames.shape[:2])}, got {tuple(frame_mask.shape)}")
        frame_mask = frame_mask.to(device=frames.device, dtype=torch.bool)
        if bool(frame_mask.all()):
            return None
        return frame_mask | ~frame_mask.any(dim=1, keepdim=True)   # a video with no valid frame: all of them

    # -- the text-agnostic fallback (aggregator) ----------------------------------------
    def forward(self, frames: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean of the valid frame embeddings, ``(B, T, E) -> (B, E)`` (no text: X-Pool's ``avg`` baseline)."""
        mask = self._check(frames, None, frame_mask)
        if mask is None:
            return frames.mean(dim=1)
        weight = mask.to(frames.dtype).unsqueeze(-1)
        return (frames * weight).sum(dim=1) / weight.sum(dim=1)

    # -- text-conditioned pooling -------------------------------------------------
    def _chunks(self, frames, texts, frame_mask):
        """Yield (start, pooled (n, V, E)) over chunks of ``text_chunk`` texts."""
        frame_mask = self._check(frames, texts, frame_mask)
        keys, values = self.cross_attn.keys_values(self.layer_norm1(frames))
        for start in range(0, texts.shape[0], self.text_chunk):
            queries = self.layer_norm1(texts[start:start + self.text_chunk])
            attended = self.layer_norm2(self.cross_attn(queries, keys, values, frame_mask))
            yield start, self.layer_norm3(attended + self.dropout(self.linear_proj(attended)))

    def pool(self, frame_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
             frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One video embedding per (text, video) pair: ``(V, T, E), (N, E) -> (N, V, E)``."""
        return torch.cat([pooled for _, pooled in self._chunks(frame_embeddings, text_embeddings, frame_mask)])

    def score(self, frame_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
              logit_scale: Optional[torch.Tensor] = None, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cosine similarity of each text with its own pooling of each video, ``(N, V)``; times
        ``exp(logit_scale)`` when CLIP's log temperature ``logit_scale`` is given. Texts go in chunks."""
        texts = F.normalize(text_embeddings, dim=-1)
        rows = [torch.einsum("ne,nve->nv", texts[start:start + pooled.shape[0]], F.normalize(pooled, dim=-1))
                for start, pooled in self._chunks(frame_embeddings, text_embeddings, frame_mask)]
        scores = torch.cat(rows) if rows else frame_embeddings.new_zeros(0, frame_embeddings.shape[0])
        return scores if logit_scale is None else logit_scale.exp().to(scores.dtype) * scores


class XPoolClassifier(TextClassifier):
    """Scores texts by X-Pool: ``logits(video, texts, aux)`` with the frame embeddings ``(B, T, E)`` as ``aux``
    -> ``(B, N)`` = ``exp(logit_scale) x cos(text, pool(text, video))``. Works without class names (free-text
    scoring through ``VideoModel.text_logits``)."""

    def __init__(self, text, class_names: Optional[Sequence[str]], templates: Sequence[str] = ("{}",),
                 prompt=None, fixed_logit_scale=None, *, head: XPoolHead) -> None:
        super().__init__(text, list(class_names or [""]), templates, prompt=prompt, fixed_logit_scale=fixed_logit_scale)
        self.class_names = list(class_names or [])
        self._head = [head]   # the model's aggregator; a list so its parameters are registered once

    @property
    def pooling(self) -> XPoolHead:
        return self._head[0]

    def encode_classes(self) -> torch.Tensor:
        """(C, E) raw class text embeddings (X-Pool pools with the unnormalised CLIP text embedding)."""
        if not self.class_names:
            raise ValueError("this x-pool model has no class names: score texts with model.text_logits(video, texts) "
                             "or give it classes with adaptvid.set_classes(model, names)")
        return encode_class_prompts(self.text, self.class_names, self.templates, normalize=False)

    def logits(self, video: torch.Tensor, texts: torch.Tensor, aux=None) -> torch.Tensor:
        if aux is None:
            raise ValueError("x-pool's classifier needs the frame embeddings (its video encoder's aux output); "
                             "score cached features with model.aggregator.score(frames, texts)")
        scale = self.logit_scale().to(aux.device)
        return self.pooling.score(aux, texts.to(aux.dtype), scale).t()


@register_method(
    "x-pool", XPoolConfig, family="post-pretraining", aliases=("xpool",), claims=("readout",), needs_text=True,
    paper="Gorti et al., X-Pool: Cross-Modal Language-Video Attention for Text-Video Retrieval, CVPR 2022",
    help="text-video retrieval: both CLIP towers fine-tuned; each text attends over the frame embeddings "
         "(text-conditioned pooling, one video embedding per text); encode_video falls back to the mean",
)
def apply_xpool(model, config: XPoolConfig) -> None:
    check_no_text_classifier(model, "x-pool")
    text = model.use_text()
    model.set_readout("embed-mean", project=True)
    head = XPoolHead(model.embed_dim, config.xpool_heads, config.xpool_dropout, config.xpool_text_chunk)
    model.set_aggregator(head)
    model.set_video_encoder(FrameEmbeddingsEncoder(model.embed_dim))
    model.head = XPoolClassifier(text, model.class_names, (config.class_template,), head=head)
    if config.train_visual:
        model.backbone.tower.requires_grad_(True)
    if config.train_text:
        text.requires_grad_(True)
    text.logit_scale.requires_grad_(True)   # the official code trains it with CLIP
