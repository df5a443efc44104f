"""Side4Video (Yao et al., arXiv 2023): a narrow spatial-temporal side network beside a frozen image tower.

"Side4Video: Spatial-Temporal Side Network for Memory-Efficient Image-to-Video
Transfer Learning". Nothing inside the image tower changes or trains, and no
gradient flows into it: a side transformer of width C (320 in the released
K400 ViT-B/16 config, 384 the code's default) reads the output of EVERY
frozen block. At side layer i (one per frozen block):

1. fusion: LayerNorm + Linear (D -> C) of block i's output, on all tokens;
   its patch rows are averaged 50/50 with the side state
   (``x = 0.5 * x + 0.5 * proj_patches``), its prefix (CLS) rows are kept
   for step 3;
2. temporal conv: ``x += pw2(dwconv_t(pw1(bn(x))))`` on the patch tokens:
   pointwise C -> C, depthwise temporal conv 3x1x1 (zero padding), pointwise
   C -> C (the official 1x1x1 / 3x1x1 / 1x1x1 convs, no activation);
3. attention with a CLS temporal shift: the projected frozen CLS of step 1 is
   shifted along time, half of its channels taken from frame t+1 and half from
   frame t-1 (zeros past the clip ends); the side patch tokens plus a learned
   spatial position embedding (one table shared by all layers) and that
   shifted CLS go through a LayerNorm; the patch tokens are the queries, all of them
   (CLS included) the keys and values. Heads of width 64 (5 heads at C=320);
4. MLP: ``x += fc2(GELU(fc1(bn(x))))``, 4x wide.

``bn`` is BatchNorm over the channels (the official ``BatchNorm3d`` on the side
state laid out as (B, C, T, h, w); here ``TokenBatchNorm`` from ``_blocks``,
the same function on the (B, T, N, C) tokens): statistics over the batch,
frames and patch tokens, batch statistics in train mode, running ones in eval
mode. The norms on the frozen tokens (step 1) and before the attention (step 3)
are LayerNorms, as officially.

The side stream holds patch tokens only (the CLS enters each layer through the
shift). Output: BatchNorm of every side token (the official
``side_post_bn``), then the mean over frames and patch tokens -> ``out_dim = C``
(not projected), then the model's Linear head.

Decisions (the paper pins the width, the 50/50 fusion, the 3x1x1 depthwise
conv and the half/half CLS shift; the rest follows the MIT-licensed
official ``Recognition/clip/model.py`` in structure, re-written here):

* No zero-init anywhere: the side network is not residual to the frozen model,
  so nothing has to start as the identity (the official code has none). Inits:
  fusion and fc1 weights N(0, (2C)^-1/2), attention in-projections
  N(0, C^-1/2), attention out-projection and fc2 N(0, C^-1/2 (2*depth)^-1/2),
  position table N(0, 0.01), biases zero, the conv layers PyTorch's default.
* BatchNorm where the official side network has it (before the temporal conv,
  before the MLP, and the final norm; weight 1, bias 0): its running statistics
  are buffers, which adaptvid checkpoints save next to the trainable parameters,
  so a reloaded model evaluates with the statistics it was trained with. Plain
  per-process BatchNorm under DDP, as the official runs (no SyncBatchNorm).
  Training from cached features gives the same batches, so the same statistics.
* No pixel stem: the official side stream starts from its own 3D patch
  embedding of the raw frames (Conv3d 3 -> C, kernel 3xPxP, + BatchNorm3d). A
  ``set_decoder`` decoder sees block outputs only (that is what makes it
  cacheable), so the side state starts at zero and block 0's projection is
  its first input.

Protocol notes. ``set_decoder`` with ``layers`` = every block: the backbone
runs without autograd (no backprop into it at all), and the model is
``cacheable()``: training from cached features stores all blocks' tokens
(``(B, depth, T, L, D)``; heavy, but the same logits as live).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import FrameContext
from ..backbones.base import merge_heads, split_heads
from ._blocks import TokenBatchNorm
from .registry import register_method


@dataclass
class Side4VideoConfig:
    side_width: int = field(default=320, metadata={
        "help": "width C of the side network (320: the released K400 ViT-B/16 config; 384: the code's default)"})
    side_head_dim: int = field(default=64, metadata={"help": "channels per attention head of the side blocks"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "hidden width of the side MLPs, times side_width"})
    kernel_t: int = field(default=3, metadata={"help": "temporal kernel of the depthwise side conv"})

    def __post_init__(self) -> None:
        if self.side_width < 2 or self.side_width % 2:
            raise ValueError(f"side4video side_width must be even and >= 2 (the CLS shift halves it), "
                             f"got {self.side_width}")
        if self.side_head_dim < 1 or self.side_width % self.side_head_dim:
            raise ValueError(f"side4video side_width {self.side_width} is not a multiple of "
                             f"side_head_dim {self.side_head_dim}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"side4video mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.kernel_t < 1 or self.kernel_t % 2 == 0:
            raise ValueError(f"side4video kernel_t must be odd and >= 1, got {self.kernel_t}")


def shift_cls(cls: torch.Tensor) -> torch.Tensor:
    """(B, T, P, C) -> the same shape: channels [:C/2] from frame t+1, [C/2:] from frame t-1, zeros past the ends."""
    half = cls.shape[-1] // 2
    from_next = F.pad(cls[:, 1:, :, :half], (0, 0, 0, 0, 0, 1))     # frame t gets t+1; the last frame gets 0
    from_prev = F.pad(cls[:, :-1, :, half:], (0, 0, 0, 0, 1, 0))    # frame t gets t-1; the first frame gets 0
    return torch.cat([from_next, from_prev], dim=-1)


class SideBlock(nn.Module):
    """One side layer on the patch tokens (B, T, N, C), given the shifted CLS keys (B, T, P, C)."""

    def __init__(self, width: int, head_dim: int, mlp_ratio: float, kernel_t: int, depth: int) -> None:
        super().__init__()
        self.num_heads = width // head_dim
        hidden = round(width * mlp_ratio)
        # temporal conv: pointwise, depthwise over time, pointwise (the official 1x1x1 / 3x1x1 / 1x1x1 Conv3d)
        self.conv_norm = TokenBatchNorm(width)   # the official bn_1 (BatchNorm3d)
        self.pw1 = nn.Linear(width, width)
        self.dw = nn.Conv1d(width, width, kernel_size=kernel_t, padding=kernel_t // 2, groups=width)
        self.pw2 = nn.Linear(width, width)
        # attention: patch queries; keys and values over the shifted CLS and the patches
        self.attn_norm = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.kv_proj = nn.Linear(width, 2 * width)
        self.out_proj = nn.Linear(width, width)
        # MLP
        self.mlp_norm = TokenBatchNorm(width)    # the official bn_2 (BatchNorm3d)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        proj_std = width ** -0.5 * (2 * depth) ** -0.5
        for linear, std in ((self.q_proj, width ** -0.5), (self.kv_proj, width ** -0.5), (self.out_proj, proj_std),
                            (self.fc1, (2 * width) ** -0.5), (self.fc2, proj_std)):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)

    def temporal_conv(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        z = self.pw1(self.conv_norm(x))
        z = z.permute(0, 2, 3, 1).reshape(b * n, c, t)                  # depthwise conv over T at each patch
        z = self.dw(z).reshape(b, n, c, t).permute(0, 3, 1, 2)
        return self.pw2(z)

    def attention(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        p = cls.shape[2]
        tokens = self.attn_norm(torch.cat([cls, x + pos], dim=2)).flatten(0, 1)   # (B*T, P+N, C)
        q = split_heads(self.q_proj(tokens[:, p:]), self.num_heads)              # patch queries only
        k, v = (split_heads(z, self.num_heads) for z in self.kv_proj(tokens).chunk(2, dim=-1))
        out = self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))
        return out.reshape(b, t, n, c)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.temporal_conv(x)
        x = x + self.attention(x, cls, pos)
        return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x))))


class Side4VideoDecoder(nn.Module):
    """The side network as a VideoModel decoder: reads every block's output, returns (B, side_width)."""

    # How the readout uses backbone.head (methods/_readout.py): never — the final norm and projection are unused.
    head_projection = None

    def __init__(self, width: int, depth: int, grid: tuple[int, int], config: Side4VideoConfig) -> None:
        super().__init__()
        c = config.side_width
        self.layers = list(range(depth))
        self.out_dim = c
        self.grid = grid
        self.fuse_norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.fuse_projs = nn.ModuleList(nn.Linear(width, c) for _ in range(depth))
        for proj in self.fuse_projs:
            nn.init.normal_(proj.weight, std=(2 * c) ** -0.5)
            nn.init.zeros_(proj.bias)
        self.position_embedding = nn.Parameter(torch.empty(grid[0] * grid[1], c))
        nn.init.normal_(self.position_embedding, std=0.01)
        self.blocks = nn.ModuleList(
            SideBlock(c, config.side_head_dim, config.mlp_ratio, config.kernel_t, depth) for _ in range(depth))
        self.norm = TokenBatchNorm(c)   # the official side_post_bn (BatchNorm3d)

    def forward(self, layer_tokens: list[torch.Tensor], ctx: FrameContext, backbone) -> torch.Tensor:
        if len(layer_tokens) != len(self.layers):
            raise ValueError(f"side4video expected {len(self.layers)} block outputs, got {len(layer_tokens)}")
        p, n = ctx.num_prefix_tokens, self.position_embedding.shape[0]
        if layer_tokens[0].shape[1] != p + n:
            raise ValueError(f"side4video expected {self.grid[0]}x{self.grid[1]}={n} patch tokens after {p} prefix "
                             f"token(s), got {layer_tokens[0].shape[1] - p}")
        x = None
        for tokens, norm, proj, block in zip(layer_tokens, self.fuse_norms, self.fuse_projs, self.blocks):
            z = ctx.unfold(proj(norm(tokens)))                            # (B, T, L, C)
            cls, patches = z[:, :, :p], z[:, :, p:]
            x = 0.5 * patches if x is None else 0.5 * x + 0.5 * patches   # the side state starts at zero
            x = block(x, shift_cls(cls), self.position_embedding.to(x.dtype))
        return self.norm(x).mean(dim=(1, 2))                              # norm, then mean over frames and patches


@register_method(
    "side4video", Side4VideoConfig, family="side network", claims=("readout",),
    paper="Yao et al., Side4Video: Spatial-Temporal Side Network for Memory-Efficient Image-to-Video "
          "Transfer Learning, arXiv 2023",
    help="frozen backbone without backprop; a narrow side transformer fed by every block's output "
         "(temporal depthwise conv, attention with a temporally shifted CLS)",
)
def apply_side4video(model, config: Side4VideoConfig) -> None:
    backbone = model.backbone
    from ._text_heads import check_linear_readout

    decoder = Side4VideoDecoder(backbone.width, backbone.depth, backbone.grid, config)
    check_linear_readout(model, "side4video", decoder.out_dim)
    model.set_decoder(decoder)
    if isinstance(model.head, nn.Linear):   # the official fc keeps PyTorch's default Linear init
        model.head.reset_parameters()
