"""Vita-CLIP (Wasim, Naseer, Khan, Khan, Shah. "Vita-CLIP: Video and text adaptive CLIP via Multimodal
Prompting", CVPR 2023; official code TalalWasim/Vita-CLIP).

Both CLIP towers stay frozen. Learned:

* ``time_embed`` (T, D), N(0, 0.02), added to every token of frame t before the pre-norm
  (``before_pre_norm``; nearest-neighbour resized for clips of another length, as the official code);
* per block, extra tokens for that block's attention only (``attn_tokens``; dropped after it):
  - 8 **global** video prompts, a separate set per block, shared by all frames;
  - T **local** frame prompts: a learned (1, T, D) table plus ``cls_proj(CLS_t)`` of each frame's CLS
    token at the block input; all T are seen by every frame of the video;
  - one **summary** token per frame: ``s = cls_proj(CLS)``; ``s + attn_T(summary_ln(s))`` with a
    multi-head self-attention across the T frames (q/k/v/out Linear, xavier-uniform, bias 0);
  global and local prompts start uniform in +-sqrt(6 / (3 * 16 * 16 + D)) (VPT's bound);
* the text side: 8 class-specific context vectors, N(0, 0.02), in front of the class name
  (``"X X X X X X X X name."``), through the frozen text tower;
* a logit scale, starting at log(1 / 0.07).

Readout: ``ln_post(CLS) @ proj`` per frame, mean over T; logits = exp(scale) x cosine similarity.

In the official code the global prompts stay in the sequence through the block's MLP and are removed
after it; the MLP works per token, so dropping them after attention gives the other tokens the same
values. ``cls_proj`` (a Linear(D, D) per block) is *frozen at its random initialisation* in the official
code (its freezing rule keeps only names containing summary/local/global/time_embed trainable); adaptvid
does the same by default (``vita_train_cls_proj=False``: 28,520,449 trainable on ViT-B/16 at 8 frames
besides the text context). The frozen one is a ``FrozenLinear``: its weight and bias are persistent
*buffers* (same ``cls_proj.weight`` / ``cls_proj.bias`` names), drawn from a fixed seed, so they count as
no parameter and a checkpoint stores them with the methods' other buffers: an imported model keeps the
official checkpoint's values frozen, and a checkpoint written before they were stored (they are its
``rebuilt_buffers``) rebuilds them exactly from the seed. ``vita_train_cls_proj=True`` trains a real
``nn.Linear`` instead (+12 x (768*768+768) = 7,087,104).
Deviation: the official patch embedding has a Conv2d bias that CLIP's weights do not provide (a frozen
random bias); adaptvid keeps the library's patch embedding unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import FrameContext, merge_heads, split_heads
from ..text import TextClassifier
from ._prompts import prompt_bound, uniform_prompts
from .coop import make_learner
from .registry import register_method

NAME = "vita_clip"
CLS_PROJ_SEED = 20230   # the frozen random cls_proj is drawn from this seed (one stream for all blocks)


@dataclass
class VitaCLIPConfig:
    vita_global_prompts: int = field(default=8, metadata={
        "help": "global video prompts per block (official 8; 0 turns them off)"})
    vita_local_prompts: bool = field(default=True, metadata={
        "help": "local frame prompts: a learned token per frame plus that frame's projected CLS, seen by all frames"})
    vita_summary_token: bool = field(default=True, metadata={
        "help": "summary token: projected frame CLS tokens mixed by attention across frames, one per frame"})
    vita_text_ctx: int = field(default=8, metadata={"help": "learned text context tokens (official 8)"})
    vita_text_class_specific: bool = field(default=True, metadata={
        "help": "one text context per class (official); False shares one, so other class names can be scored"})
    vita_train_cls_proj: bool = field(default=False, metadata={
        "help": "train the per-block CLS projection; the official code leaves it frozen at random init"})

    def clip_bound(self) -> str:
        """What is built for whole num_frames-frame clips (registry.check_clip_length)."""
        return "vita-clip's local prompts (vita_local_prompts=False leaves them out)" if self.vita_local_prompts else ""

    def __post_init__(self) -> None:
        if self.vita_global_prompts < 0 or self.vita_text_ctx < 1:
            raise ValueError("vita-clip needs vita_global_prompts >= 0 and vita_text_ctx >= 1")


class TimeEmbedding(nn.Module):
    """``before_pre_norm``: a (T, D) table, N(0, 0.02), added to every token of frame t."""

    def __init__(self, num_frames: int, width: int) -> None:
        super().__init__()
        self.time_embed = nn.Parameter(torch.empty(num_frames, width))
        nn.init.normal_(self.time_embed, std=0.02)

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        table = self.time_embed
        frames = ctx.num_frames
        if frames != table.shape[0]:   # the official code resizes it by nearest neighbour
            table = F.interpolate(table.t()[None], size=frames, mode="nearest")[0].t()
        n, length, width = x.shape
        x = x.reshape(n // frames, frames, length, width) + table[None, :, None].to(x.dtype)
        return x.reshape(n, length, width)


class FrameAttention(nn.Module):
    """Multi-head self-attention across the frames of a video, (B, T, D) -> (B, T, D)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.num_heads
        q, k, v = split_heads(self.q_proj(x), h), split_heads(self.k_proj(x), h), split_heads(self.v_proj(x), h)
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


def _seeded_linear(width: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear's default initialisation (uniform +-1/sqrt(fan_in) for weight and bias), from ``generator``."""
    linear = nn.Linear(width, width)
    bound = 1.0 / math.sqrt(width)
    with torch.no_grad():
        linear.weight.copy_(torch.empty(width, width).uniform_(-bound, bound, generator=generator))
        linear.bias.copy_(torch.empty(width).uniform_(-bound, bound, generator=generator))
    return linear


class FrozenLinear(nn.Module):
    """A linear map that is never trained: weight and bias are persistent buffers, not parameters, so they
    count as no parameter, get no gradient, follow ``.to()`` and are stored by checkpoints (which hold the
    methods' persistent buffers) under the names an ``nn.Linear`` would have."""

    # Drawn from CLS_PROJ_SEED when built: a checkpoint written before they were stored may lack them and
    # still loads to the same model (adaptvid.checkpoints.adapter.load_tensors).
    rebuilt_buffers = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _cls_proj(width: int, generator: torch.Generator, trained: bool) -> nn.Module:
    """The per-block CLS projection, drawn from ``generator`` (the same values trained or not). Built as an
    nn.Linear either way, so the global RNG advances as it always did and the other modules' initialisation
    under a given ``torch.manual_seed`` is unchanged."""
    linear = _seeded_linear(width, generator)
    return linear if trained else FrozenLinear(linear.weight.detach(), linear.bias.detach())


class VitaTokens(nn.Module):
    """``attn_tokens`` of one block: [global prompts, local prompts, summary token] for every frame."""

    def __init__(self, width: int, num_heads: int, num_frames: int, num_global: int, local: bool, summary: bool,
                 bound: float, generator: torch.Generator, train_cls_proj: bool) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.global_prompts = uniform_prompts(num_global, width, bound=bound) if num_global else None
        self.local_prompts = uniform_prompts(1, num_frames, width, bound=bound) if local else None
        self.cls_proj = None
        if local or summary:
            self.cls_proj = _cls_proj(width, generator, train_cls_proj)
        self.summary_ln = nn.LayerNorm(width) if summary else None
        self.summary_attn = FrameAttention(width, num_heads) if summary else None

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        n, _, width = x.shape
        frames = ctx.num_frames
        videos = n // frames
        parts = []
        if self.global_prompts is not None:
            parts.append(self.global_prompts.to(x.dtype).expand(n, -1, -1))
        if self.cls_proj is not None:
            cls = self.cls_proj(x[:, 0].reshape(videos, frames, width))        # (B, T, D)
        if self.local_prompts is not None:
            table = self.local_prompts
            if frames != self.num_frames:   # the official code repeats the table for longer clips
                if frames % self.num_frames:
                    raise ValueError(f"vita-clip: local prompts were built for {self.num_frames} frames; clips of "
                                     f"{frames} frames need a multiple of it (or build with num_frames={frames})")
                table = table.repeat(1, frames // self.num_frames, 1)
            local = table.to(x.dtype) + cls                                   # (B, T, D)
            parts.append(local.repeat_interleave(frames, dim=0))              # every frame sees all T
        if self.summary_attn is not None:
            summary = cls + self.summary_attn(self.summary_ln(cls))            # (B, T, D)
            parts.append(summary.reshape(n, 1, width))                         # frame t gets its own
        return torch.cat(parts, dim=1)


class VitaClassifier(TextClassifier):
    """A text classifier with its own trained temperature, starting at log(1 / 0.07) (the official code's)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.learned_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def logit_scale(self) -> torch.Tensor:
        return self.learned_logit_scale


@register_method(
    "vita-clip", VitaCLIPConfig, family="prompt tuning", needs_text=True, stage="prompt",
    paper="Wasim, Naseer, Khan, Khan, Shah. Vita-CLIP: Video and text adaptive CLIP via Multimodal Prompting, "
          "CVPR 2023",
    help="frozen CLIP; time embedding, per-block global/local/summary video prompts, class-specific text context",
)
def apply_vita_clip(model, config: VitaCLIPConfig) -> None:
    from ._readout import record_readout
    from ._text_heads import check_no_text_classifier

    check_no_text_classifier(model, "vita-clip", " (learned context and temperature)")
    record_readout(model, "vita-clip", "embed-mean")
    backbone = model.backbone
    width, frames = backbone.width, model.num_frames
    backbone.before_pre_norm[NAME] = TimeEmbedding(frames, width)
    if config.vita_global_prompts or config.vita_local_prompts or config.vita_summary_token:
        bound = prompt_bound(backbone.patch_size, width)
        generator = torch.Generator().manual_seed(CLS_PROJ_SEED)
        for slot in backbone.slots:
            slot.add("attn_tokens", NAME, VitaTokens(
                width, backbone.num_heads, frames, config.vita_global_prompts, config.vita_local_prompts,
                config.vita_summary_token, bound, generator, config.vita_train_cls_proj))
    model.set_readout("embed-mean", project=True)
    learner = make_learner(model, config.vita_text_ctx, "front", config.vita_text_class_specific, "", 1)
    model.set_text_classifier(prompt=learner, classifier_cls=VitaClassifier)
