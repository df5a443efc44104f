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


def bottleneck_width(width: int, ratio: float, owner: str) -> int:
    """``int(width * ratio)``, refusing a ratio that leaves no channel."""
    hidden = int(width * ratio)
    if hidden < 1:
        raise ValueError(f"{owner}: ratio {ratio} leaves no bottleneck width on a {width}-wide tower")
    return hidden


class Bottleneck(nn.Module):
    """The bottleneck adapter of AIM, DualPath and ZeroI2V: ``down -> [GELU] -> dropout -> up``, times
    ``scale``; with ``skip``, added to its input. The up-projection and both biases start at zero, so a
    skip adapter starts as the identity and a branch adapter at zero.

    ``down_init``: ``"trunc_normal"`` (std 0.02; AIM, ZeroI2V) or ``"default"`` (PyTorch's; DualPath).
    Without the activation it is affine in eval mode (``affine()``), which is what lets ZeroI2V fold it
    into the frozen weights.
    """

    def __init__(self, width: int, hidden: int, *, activation: bool = True, dropout: float = 0.0,
                 scale: float = 1.0, skip: bool = True, down_init: str = "trunc_normal") -> None:
        super().__init__()
        if down_init not in ("trunc_normal", "default"):
            raise ValueError(f"down_init must be 'trunc_normal' or 'default', got {down_init!r}")
        self.skip, self.scale, self.activation = skip, scale, activation
        self.down = nn.Linear(width, hidden)
        self.act = nn.GELU() if activation else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, width)
        if down_init == "trunc_normal":
            nn.init.trunc_normal_(self.down.weight, std=0.02)
        for p in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, ctx: FrameContext = None) -> torch.Tensor:
        out = self.up(self.drop(self.act(self.down(x))))
        if self.scale != 1.0:
            out = self.scale * out
        return x + out if self.skip else out

    @torch.no_grad()
    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, a)`` in float64 with ``adapter(x) = A x + a`` in eval mode (no activation only)."""
        if self.activation:
            raise ValueError("a bottleneck with a GELU is not affine")
        w1, b1 = self.down.weight.double(), self.down.bias.double()
        w2, b2 = self.up.weight.double(), self.up.bias.double()
        linear = self.scale * (w2 @ w1)
        if self.skip:
            linear = linear + torch.eye(w2.shape[0], dtype=torch.float64, device=w2.device)
        return linear, self.scale * (w2 @ b1 + b2)

    def extra_repr(self) -> str:
        return f"skip={self.skip}, scale={self.scale}"


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of token tensors ``(..., C)``: the statistics of channel c are
    taken over every other dimension (batch, frames, tokens), so on the patch tokens of a clip laid
    out as ``(B, T, h*w, C)`` or ``(B*T, h*w, C)`` it computes what ``nn.BatchNorm3d(C)`` computes on
    the same tokens as ``(B, C, T, h, w)`` (and ``nn.BatchNorm1d`` on ``(N, C)``): batch statistics
    in train mode (running mean and variance updated, momentum 0.1), the running ones in eval mode.

    It is an ``nn.BatchNorm1d``: the same parameters (weight 1, bias 0: the ``2C`` of a LayerNorm)
    and buffers (``running_mean``, ``running_var``, ``num_batches_tracked``), which adaptvid
    checkpoints save (``adaptvid.checkpoint.saved_buffers``). Under DDP it is plain, per-process
    BatchNorm, as in the official Side4Video and UniFormerV2 runs (no SyncBatchNorm): each process
    normalises with its own batch's statistics. ``nn.SyncBatchNorm.convert_sync_batchnorm`` would
    replace it with a module that expects channels first; adaptvid never converts.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_features:
            raise ValueError(f"TokenBatchNorm expected {self.num_features} channels last, got shape {tuple(x.shape)}")
        return super().forward(x.reshape(-1, self.num_features)).reshape(x.shape)
