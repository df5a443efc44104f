"""Building blocks shared by several methods (not a method: the registry skips private modules)."""
from __future__ import annotations

import torch
from torch import nn

from ..backbones import FrameContext


class TemporalEmbedding(nn.Module):
    """A learned ``(1, T, D)`` table, zero at init, added to every token of frame t.

    Sits in ``Backbone.before_pre_norm`` (AIM, ZeroI2V add it before the pre-norm).
    """

    def __init__(self, num_frames: int, width: int, owner: str) -> None:
        super().__init__()
        self.owner = owner
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, width))

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        frames = self.temporal_embedding.shape[1]
        if ctx.num_frames != frames:
            raise ValueError(f"{self.owner}: the temporal embedding was built for {frames} frames but got clips of "
                             f"{ctx.num_frames}; build the model with num_frames={ctx.num_frames}")
        n, length, width = x.shape
        x = x.reshape(n // frames, frames, length, width) + self.temporal_embedding.unsqueeze(2).to(x.dtype)
        return x.reshape(n, length, width)
