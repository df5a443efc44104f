"""A temporal transformer over frame embeddings: ``(B, T, E) -> (B, E)`` (the temporal transformer of ActionCLIP, Text4Vis, Efficient-Prompt and CLIP4Clip).

One module covers the heads that mix the per-frame CLIP embeddings of a clip:

* Efficient-Prompt (Ju et al., ECCV 2022): 1 pre-LN block, 8 heads, QuickGELU, a learned temporal
  position embedding ``nn.Embedding(T, E)`` N(0, 0.01), PyTorch default init, no outer residual;
* ActionCLIP's and Text4Vis's "Transf" (Wang et al. 2021; Wu et al., AAAI 2023): 6 pre-LN blocks,
  E/64 heads, QuickGELU, LayerNorm eps 1e-12, ``nn.Embedding(77, E)`` positions (77 rows: CLIP's text
  context length, of which the first T are used), BERT-style init (every Linear and Embedding
  N(0, 0.02), biases 0; the attention's fused input projection keeps PyTorch's xavier init because it
  is not an ``nn.Linear``), and the raw input added back before the mean.

Each block is ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` with ``mlp = c_proj(act(c_fc(x)))``.
The output is the mean over time of ``blocks(x + pos)`` (plus ``x`` with ``residual``). Without a
position embedding the attention is permutation-equivariant, so the output ignores frame order.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

ACTIVATIONS = ("quickgelu", "gelu")
INITS = ("default", "bert")


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU (the official heads use it, not the exact GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TemporalBlock(nn.Module):
    """A pre-LN transformer block over the T frame embeddings of each clip (batch first)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "quickgelu",
                 dropout: float = 0.0, ln_eps: float = 1e-5) -> None:
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("act", QuickGELU() if activation == "quickgelu" else nn.GELU()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TemporalTransformer(nn.Module):
    """``(B, T, E)`` frame embeddings -> ``(B, E)``: position embedding, L blocks, optional residual, mean over T.

    ``num_positions``: rows of the position table (>= the clip length; default ``num_frames``);
    ``position_std``: its N(0, std) init, or ``position=False`` for none; ``init``: ``"default"``
    (PyTorch's own) or ``"bert"`` (ActionCLIP/Text4Vis: Linear and Embedding N(0, 0.02), biases 0,
    LayerNorm 1/0; the position table then also gets std 0.02, as their ``apply(init_weights)`` does).
    """

    def __init__(self, width: int, layers: int, heads: int, num_frames: int, *, mlp_ratio: float = 4.0,
                 activation: str = "quickgelu", position: bool = True, num_positions: Optional[int] = None,
                 position_std: float = 0.01, residual: bool = False, init: str = "default",
                 ln_eps: float = 1e-5, dropout: float = 0.0) -> None:
        super().__init__()
        if layers < 1 or heads < 1 or width % heads:
            raise ValueError(f"temporal transformer: need layers >= 1 and heads dividing the width {width}, "
                             f"got layers={layers}, heads={heads}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"temporal transformer activation must be one of {ACTIVATIONS}, got {activation!r}")
        if init not in INITS:
            raise ValueError(f"temporal transformer init must be one of {INITS}, got {init!r}")
        self.width, self.residual = width, residual
        self.num_positions = (num_positions or num_frames) if position else 0
        if position and self.num_positions < num_frames:
            raise ValueError(f"temporal transformer: {self.num_positions} positions for {num_frames} frames")
        self.position = nn.Embedding(self.num_positions, width) if position else None
        self.blocks = nn.Sequential(*[TemporalBlock(width, heads, mlp_ratio, activation, dropout, ln_eps)
                                      for _ in range(layers)])
        if init == "bert":
            self.apply(_bert_init)
        elif self.position is not None:
            nn.init.normal_(self.position.weight, std=position_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.width:
            raise ValueError(f"temporal transformer expects (B, T, {self.width}) frame embeddings, got {tuple(x.shape)}")
        h = x
        if self.position is not None:
            t = x.shape[1]
            if t > self.num_positions:
                raise ValueError(f"temporal transformer: clips of {t} frames but only {self.num_positions} "
                                 f"position embeddings; build the model with num_frames={t}")
            h = h + self.position.weight[:t].to(x.dtype)
        h = self.blocks(h)
        if self.residual:
            h = h + x
        return h.mean(dim=1)


def _bert_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
