"""Visual prompt tokens shared by the prompt-tuning methods (VPT, Vita-CLIP); not a method itself.

* :func:`prompt_bound` — VPT's initialisation: uniform in +-sqrt(6 / (3 * patch * patch + D)), the
  xavier-uniform bound of a patch-embedding projection (Jia et al., Visual Prompt Tuning, ECCV 2022;
  Vita-CLIP uses the same for its global and local prompts).
* :class:`InsertedPrompts` — ``after_embed``: k prompts placed right after the prefix (CLS) tokens once,
  carried through every block (shallow VPT).
* :class:`LayerPrompts` — ``attn_tokens``: k prompts seen by one block's attention and dropped after it
  (deep VPT, Vita-CLIP's global prompts).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..backbones import FrameContext


def prompt_bound(patch_size: int, width: int) -> float:
    return math.sqrt(6.0 / (3 * patch_size * patch_size + width))


def uniform_prompts(*shape: int, bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class InsertedPrompts(nn.Module):
    """(k, D) prompts inserted after the first ``prefix`` tokens of every frame: [CLS, P_1..P_k, patches]."""

    def __init__(self, num_tokens: int, width: int, bound: float, prefix: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.prompts = uniform_prompts(num_tokens, width, bound=bound)

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        prompts = self.prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :self.prefix], prompts, x[:, self.prefix:]], dim=1)

    def extra_repr(self) -> str:
        return f"tokens={self.prompts.shape[0]}, after {self.prefix} prefix token(s)"


class LayerPrompts(nn.Module):
    """(k, D) prompts for one block's attention; their outputs are dropped after it."""

    def __init__(self, num_tokens: int, width: int, bound: float) -> None:
        super().__init__()
        self.prompts = uniform_prompts(num_tokens, width, bound=bound)

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        # A copy, not an expanded view: a view of the parameter made under no_grad would claim
        # requires_grad without a grad_fn, which module hooks (FLOP counting) reject.
        return self.prompts.to(x.dtype).unsqueeze(0).repeat(x.shape[0], 1, 1)
