"""EVL (Lin et al., ECCV 2022): a video decoder on top of a frozen image backbone.

"Frozen CLIP Models are Efficient Video Learners". Nothing inside the image
tower changes or trains. One learnable query token cross-attends, layer by
layer, the tokens of all frames of the last N blocks (N=4 on ViT-B/16). Before
decoder layer i reads block ``depth-N+i``, that block's frame features get
three local temporal modules:

1. a depthwise Conv1d over time (k=3, zero padding, bias) on every token, CLS
   included, added as a residual;
2. a temporal position embedding (T, D), zero-init, added to every token;
3. a temporal cross-attention feature on the patch tokens (prefix rows get 0):
   the block's own attention queries of frame t against its keys of frame t-1
   (and, separately, t+1), scaled by 1/sqrt(head_dim), softmax over the
   neighbour frame's patches, mean over heads, then weighted by a learned relative-position table (one per
   direction, zero-init) indexed by the offset between the query and key
   patches and summed over the key patches.

Decoder layer: ``x += attn(norm1(x), norm3(y), norm3(y))``, ``x += mlp(norm2(x))``
with y = all T*L frame tokens, the MLP 4x wide with QuickGELU and dropout 0.5
before fc2. The decoder ends with a LayerNorm; the model's dropout and linear
head follow (``head_dropout=0.5`` in the recipes), as in the paper's head.

Protocol notes. The decoder reads the last N blocks' outputs and, through
``qk_layers``, the queries and keys those blocks' frozen attention computed
anyway (captured during the forward: no extra projection, so EVL costs the
official 1.077x of the image model on ViT-B/16). The tower stays untouched
(``cacheable()``): cached-feature training stores outputs, q and k.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import FrameContext
from ..backbones.base import merge_heads, split_heads
from .registry import register_method


@dataclass
class EVLConfig:
    num_layers: int = field(default=4, metadata={
        "help": "decoder layers = last backbone blocks read (the paper's 4); capped at the backbone depth"})
    temporal_conv: bool = field(default=True, metadata={"help": "depthwise temporal Conv1d (k=3) on the frame features"})
    temporal_pos: bool = field(default=True, metadata={"help": "temporal position embedding (zero-init) on the frame features"})
    temporal_cross_attention: bool = field(default=True, metadata={
        "help": "temporal cross-attention feature from adjacent frames' attention q/k (zero-init tables)"})
    mlp_dropout: float = field(default=0.5, metadata={"help": "dropout between the activation and fc2 of the decoder MLPs"})

    def clip_bound(self) -> str:
        """What is built for whole num_frames-frame clips (registry.check_clip_length)."""
        return "evl's decoder (its temporal modules)"

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"evl num_layers must be >= 1, got {self.num_layers}")
        if not 0.0 <= self.mlp_dropout < 1.0:
            raise ValueError(f"evl mlp_dropout must be in [0, 1), got {self.mlp_dropout}")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): CLIP's activation, used by the decoder MLPs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """(Np, Np) index into a ((2h-1)(2w-1), D) table for each (query patch, key patch) pair.

    The offset is query minus key, shifted to be non-negative, row offset major.
    """
    h, w = grid
    rows = torch.arange(h).repeat_interleave(w)       # row of each patch, row-major patches
    cols = torch.arange(w).repeat(h)
    d_row = rows[:, None] - rows[None, :] + (h - 1)   # (Np, Np) in [0, 2h-2]
    d_col = cols[:, None] - cols[None, :] + (w - 1)
    return d_row * (2 * w - 1) + d_col


def relative_position_product(affinity: torch.Tensor, table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``out[n, q] = sum_k affinity[n, q, k] * table[relative_position_index(grid)[q, k]]`` without the
    (Np, Np, D) unrolled table (118 MB per call on ViT-B/16, where the official code gathers it).

    affinity: (N, Np, Np); table: ((2h-1)(2w-1), D) -> (N, Np, D). With the key columns taken in
    reverse order, the table entries one query row meets for one key row are a sliding window over
    one table row, i.e. a strided view (``unfold``) of the table, not a copy. Query/key row pairs
    with the same row offset share that window, so they go through one batched product (2h-1 in
    all); each adds exactly the multiply-adds of the unrolled product (the same counted FLOPs).
    """
    h, w = grid
    n, d = affinity.shape[0], table.shape[1]
    device = table.device.type   # (autocast does not exist on every device type, e.g. meta for FLOP counting)
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else table.dtype
    # (cq, rq, rk, N, ck') with ck' = w-1-ck: the table column of (cq, ck') is cq + ck'
    a = affinity.to(dtype).reshape(n, h, w, h, w).flip(-1).permute(2, 1, 3, 0, 4)
    # windows[i, cq, ck'] = table row i (row offset rq - rk + h - 1), column cq + ck'
    windows = table.to(dtype).reshape(2 * h - 1, 2 * w - 1, d).unfold(1, w, 1).transpose(-1, -2)
    out = a.new_zeros(w, h * n, d)                                        # (cq, rq * N, D)
    # in place only where autograd is off: the in-place product is neither recorded nor FLOP-counted
    fused = not (torch.is_grad_enabled() and (affinity.requires_grad or table.requires_grad))
    for offset in range(1 - h, h):                                        # offset = rq - rk
        rq0, rq1 = max(0, offset), min(h, h + offset)
        x = a[:, rq0:rq1, rq0 - offset:rq1 - offset].diagonal(dim1=1, dim2=2)   # (cq, N, ck', pairs)
        x = x.permute(0, 3, 1, 2).reshape(w, (rq1 - rq0) * n, w)
        acc = out[:, rq0 * n:rq1 * n]
        if fused:
            torch.baddbmm(acc, x, windows[offset + h - 1], out=acc)
        else:
            acc += torch.bmm(x, windows[offset + h - 1])
    return out.reshape(w, h, n, d).permute(2, 1, 0, 3).reshape(n, h * w, d)


class TemporalCrossAttention(nn.Module):
    """Motion feature from the attention of frame t's queries on frame t-1's (and t+1's) keys."""

    def __init__(self, width: int, grid: tuple[int, int]) -> None:
        super().__init__()
        h, w = grid
        self.grid = (h, w)
        size = (2 * h - 1) * (2 * w - 1)
        self.w_prev = nn.Parameter(torch.zeros(size, width))   # frame t attends to frame t-1
        self.w_next = nn.Parameter(torch.zeros(size, width))   # frame t attends to frame t+1
        self.register_buffer("index", relative_position_index(grid), persistent=False)

    def _half(self, q: torch.Tensor, k: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        # q, k: (B, T', heads, Np, hd), frame-aligned pairs -> (B, T', Np, D)
        affinity = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5     # (B, T', heads, Np, Np)
        affinity = affinity.softmax(dim=-1).mean(dim=2)                 # softmax over keys, mean over heads
        b, t, n, _ = affinity.shape
        out = relative_position_product(affinity.reshape(b * t, n, n), table, self.grid)
        return out.reshape(b, t, n, -1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        """q, k: (B*T, heads, L, hd) of one block -> feature (B, T, L, D), zero on the prefix tokens."""
        p, t = ctx.num_prefix_tokens, ctx.num_frames
        q, k = ctx.unfold(q[:, :, p:]), ctx.unfold(k[:, :, p:])           # (B, T, heads, Np, hd)
        b, _, _, n, _ = q.shape
        if n != self.index.shape[0]:
            raise ValueError(f"evl expected {self.grid[0]}x{self.grid[1]}={self.index.shape[0]} patch tokens, got {n}")
        if t == 1:
            return q.new_zeros(b, t, p + n, self.w_prev.shape[1])
        prev = self._half(q[:, 1:], k[:, :-1], self.w_prev)                # for frames 1..T-1
        nxt = self._half(q[:, :-1], k[:, 1:], self.w_next)                  # for frames 0..T-2
        feature = F.pad(prev, (0, 0, 0, 0, 1, 0)) + F.pad(nxt, (0, 0, 0, 0, 0, 1))   # (B, T, Np, D)
        return F.pad(feature, (0, 0, p, 0))                                 # prefix rows get 0


class CrossAttention(nn.Module):
    """Multi-head attention of queries x on keys/values y; projections with bias, SDPA."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"evl: width {width} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.num_heads
        q, k, v = split_heads(self.q_proj(x), h), split_heads(self.k_proj(y), h), split_heads(self.v_proj(y), h)
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class DecoderLayer(nn.Module):
    def __init__(self, width: int, num_heads: int, mlp_dropout: float, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = round(width * mlp_ratio)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CrossAttention(width, num_heads)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(width, hidden))
        self.mlp.add_module("act", QuickGELU())
        self.mlp.add_module("dropout", nn.Dropout(mlp_dropout))
        self.mlp.add_module("fc2", nn.Linear(hidden, width))
        for fc in (self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (B, Q, D) queries; y: (B, M, D) frame tokens."""
        x = x + self.attn(self.norm1(x), self.norm3(y))
        return x + self.mlp(self.norm2(x))


class EVLDecoder(nn.Module):
    """The EVL decoder as a VideoModel decoder: reads blocks [depth-N, ..., depth-1] and their q/k, returns (B, D)."""

    # How the readout uses backbone.head (methods/_readout.py): never — the final norm and projection are unused.
    head_projection = None

    def __init__(self, width: int, num_heads: int, depth: int, grid: tuple[int, int], num_frames: int,
                 config: EVLConfig) -> None:
        super().__init__()
        n = min(config.num_layers, depth)
        self.num_layers = n
        self.num_heads = num_heads
        self.num_frames = num_frames
        self.layers = list(range(depth - n, depth))
        # The same blocks' attention q/k, captured during the backbone forward (cross-frame feature).
        self.qk_layers = list(self.layers) if config.temporal_cross_attention else []
        self.out_dim = width
        self.query_token = nn.Parameter(torch.zeros(1, 1, width))   # zero-init, as in the official code
        self.temporal_conv = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size=3, padding=1, groups=width) for _ in range(n)
        ) if config.temporal_conv else None
        self.temporal_pos_embedding = nn.ParameterList(
            nn.Parameter(torch.zeros(num_frames, width)) for _ in range(n)
        ) if config.temporal_pos else None
        self.temporal_cross_attention = nn.ModuleList(
            TemporalCrossAttention(width, grid) for _ in range(n)
        ) if config.temporal_cross_attention else None
        self.blocks = nn.ModuleList(DecoderLayer(width, num_heads, config.mlp_dropout) for _ in range(n))
        self.norm = nn.LayerNorm(width)

    def frame_features(self, i: int, tokens: torch.Tensor, qk, ctx: FrameContext) -> torch.Tensor:
        """Block (depth-N+i)'s output with the local temporal modules added, (B, T, L, D)."""
        x = ctx.unfold(tokens)                                            # (B, T, L, D)
        if self.temporal_conv is not None:
            b, t, length, d = x.shape
            z = x.permute(0, 2, 3, 1).reshape(b * length, d, t)           # depthwise conv over T
            z = self.temporal_conv[i](z).reshape(b, length, d, t).permute(0, 3, 1, 2)
            x = x + z
        if self.temporal_pos_embedding is not None:
            x = x + self.temporal_pos_embedding[i][None, :, None, :]
        if self.temporal_cross_attention is not None:
            # The frozen block's own q/k (after projection, before scaling).
            q, k = (split_heads(z, self.num_heads) for z in qk)
            x = x + self.temporal_cross_attention[i](q, k, ctx).to(x.dtype)
        return x

    def forward(self, layer_tokens: list[torch.Tensor], ctx: FrameContext, backbone) -> torch.Tensor:
        n, expected = self.num_layers, self.num_layers + 2 * len(self.qk_layers)
        if len(layer_tokens) != expected:
            raise ValueError(f"evl expected {expected} tensors (outputs, queries, keys), got {len(layer_tokens)}")
        if ctx.num_frames != self.num_frames:
            raise ValueError(f"evl was built for {self.num_frames} frames (temporal position embedding), "
                             f"got clips of {ctx.num_frames}")
        batch = layer_tokens[0].shape[0] // ctx.num_frames
        x = self.query_token.repeat(batch, 1, 1)   # a copy: an expanded view of a leaf confuses module hooks under no_grad
        for i, block in enumerate(self.blocks):
            qk = (layer_tokens[n + i], layer_tokens[2 * n + i]) if self.qk_layers else None
            y = self.frame_features(i, layer_tokens[i], qk, ctx)
            x = block(x, y.flatten(1, 2))                                 # all T*L tokens as keys/values
        return self.norm(x[:, 0])


def check_composition(model, decoder: EVLDecoder) -> None:
    """Refuse, with the reason, what the methods applied before evl leave that its decoder cannot work with."""
    from ._text_heads import check_linear_readout
    from .lora import check_attention_sees_lora

    backbone = model.backbone
    check_linear_readout(model, "evl", decoder.out_dim)
    qk_blocks = sorted({i % backbone.depth for i in decoder.qk_layers})
    replaced = sorted({name for i in qk_blocks for name in backbone.slots[i].attention})
    if replaced:
        raise ValueError(f"evl's cross-frame attention feature reads the frozen attention's queries and keys of "
                         f"block(s) {qk_blocks}, but {', '.join(replaced)} replaces the attention there; pass "
                         "temporal_cross_attention=False or choose one of them")
    check_attention_sees_lora(model, "evl", qk_blocks, "reads the queries and keys (and computes the attention)")


@register_method(
    "evl", EVLConfig, family="decoder", claims=("readout",),
    paper="Lin et al., Frozen CLIP Models are Efficient Video Learners, ECCV 2022",
    help="frozen backbone; a query token cross-attends the last 4 layers' frame tokens "
         "with local temporal modules (temporal conv, position embedding, cross-frame attention feature)",
)
def apply_evl(model, config: EVLConfig) -> None:
    backbone = model.backbone
    decoder = EVLDecoder(backbone.width, backbone.num_heads, backbone.depth, backbone.grid, model.num_frames, config)
    check_composition(model, decoder)
    model.set_decoder(decoder)
    if isinstance(model.head, nn.Linear):   # the official head Linear keeps PyTorch's default init
        model.head.reset_parameters()
