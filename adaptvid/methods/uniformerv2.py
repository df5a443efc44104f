"""UniFormerV2 (Li et al., ICCV 2023): local temporal relation in the blocks, a global query decoder on top.

"UniFormerV2: Unlocking the Potential of Image ViTs for Video Understanding" (arXiv 2211.09552).
Written from the paper and the official code's structure (OpenGVLab/UniFormerV2,
``slowfast/models/uniformerv2_model.py``); no line of it is ported. Two parts:

1. **Local UniBlock** (``local``): a local temporal MHRA on the residual stream before the block's
   attention and, with ``double_local`` (the official default), a second one before its MLP.
   On the patch tokens laid out as (T, h, w): BatchNorm -> 1x1x1 conv D -> D // 1.5 -> depthwise
   3x1x1 temporal conv -> 1x1x1 conv back to D, added as a residual; prefix (CLS) tokens pass
   unchanged. No non-linearity. The last conv (weight and bias) starts at zero, so the block
   starts as the image block; the other convs keep PyTorch's default init, as officially.
   The 1x1x1 convs are Linear layers on the token axis (the same function and the same init).
   The BatchNorm is the official ``BatchNorm3d(D)`` over the clip's patch tokens as
   (B, D, T, h, w), applied here by ``TokenBatchNorm`` (``_blocks``) to the (B*T, h*w, D) tokens:
   per-channel statistics over batch, frames and patches (batch statistics in train mode, running
   ones in eval mode; weight 1, bias 0). Its running statistics are buffers, saved in adaptvid
   checkpoints next to the trainable parameters. Plain per-process BatchNorm under DDP, as the
   official runs (no SyncBatchNorm). In the fine-tuned regime the tower's blocks run in train mode
   with it; with ``frozen=True`` the local MHRAs still train (see below), statistics included.
2. **Global UniBlock** (the decoder, over the last ``num_global_layers`` blocks): one learnable
   query token (zero-init) is carried through one decoder layer per block. Before layer i reads
   block ``depth-K+i``, that block's patch tokens get a dynamic position encoding, a depthwise
   3x3x3 conv over (T, h, w) with zero padding, added as a residual (bias zero-init, weight
   PyTorch's default). Decoder layer: ``q += attn(norm1(q), norm3(y), norm3(y))``,
   ``q += mlp(norm2(q))`` with y = the T*L tokens of all frames (prefix tokens included), the
   MLP 4x wide with QuickGELU and dropout before fc2. Init: q/k/v weights one xavier-uniform draw
   over the stacked (3D, D) in-projection, biases 0; the output projection and fc2 zero (weight and
   bias), fc1 xavier-uniform with PyTorch's default bias. So the query stays 0 at init.
3. **Fusion** (fine-tuned regime): ``out = (1 - s) * query + s * mean_t(CLS)`` with
   ``s = sigmoid(balance)``, ``balance`` a zero-init per-channel (D,) vector (s = 0.5 at init);
   CLS = the last block's raw CLS token (before the tower's final norm), as the official order.
   Then a new LayerNorm; the model's dropout (``head_dropout``, 0.5 in the recipes) and linear
   head follow. At init the video embedding is therefore ``LayerNorm(mean_t CLS / 2)``: the image
   model's CLS, mean-pooled over time, through a fresh norm. The official frozen variant has no
   fusion (``out = LayerNorm(query)``); ``fusion="auto"`` follows that.

Regimes. ``frozen=False`` (the paper's main recipes): the whole image tower is fine-tuned (at the
trainer's ``backbone_lr``), except the parts only its own readout uses (final norm, CLIP projection):
UniFormerV2 never applies them, so they stay frozen rather than sit unused (unused trainable tensors
break DDP). ``frozen=True`` (the official "frozen" variant): the tower stays frozen; the decoder,
the local MHRAs (if any) and the head train. With ``local=False`` and ``frozen=True`` nothing inside
the tower changes, so cached-feature training works.

Deviations, where the protocol asked for one:

* The official frozen variant freezes the local MHRAs with the tower (they sit inside its blocks);
  here they train, since a zero-init module that never trains is the identity.
* Not available: the SSv2 configs' temporal down-sampling (a 3x16x16 patch embedding with stride 2
  in time) and stochastic depth (0 in the official K400 B/16 config).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones import FrameContext
from ._blocks import TokenBatchNorm
from .evl import DecoderLayer
from .registry import register_method

FUSIONS = ("auto", "on", "off")


@dataclass
class UniFormerV2Config:
    frozen: bool = field(default=False, metadata={
        "help": "false: fine-tune the whole image tower (the paper's main recipes); true: keep it frozen and "
                "train only the new modules (the official 'frozen' variant)"})
    local: bool = field(default=True, metadata={
        "help": "local temporal MHRA (zero-init depthwise temporal-conv bottleneck) in every block; "
                "the official K400 configs turn it off, the SSv2 ones on"})
    double_local: bool = field(default=True, metadata={
        "help": "a second local MHRA before each block's MLP (official default)"})
    local_reduction: float = field(default=1.5, metadata={
        "help": "local MHRA bottleneck = width // local_reduction (1.5: 768 -> 512)"})
    num_global_layers: int = field(default=4, metadata={
        "help": "decoder layers = last backbone blocks read (4 on B/16 K400, 8 on B/16 SSv2); capped at the depth"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "decoder MLP width as a multiple of the token width"})
    mlp_dropout: float = field(default=0.5, metadata={"help": "dropout between the activation and fc2 of the decoder MLPs"})
    fusion: str = field(default="auto", metadata={
        "help": "fuse the decoder query with the backbone's mean CLS through a learned sigmoid balance: "
                "'auto' (official: when fine-tuned, not when frozen), 'on' or 'off'"})

    def __post_init__(self) -> None:
        if self.num_global_layers < 1:
            raise ValueError(f"uniformerv2 num_global_layers must be >= 1, got {self.num_global_layers}")
        if self.local_reduction < 1:
            raise ValueError(f"uniformerv2 local_reduction must be >= 1, got {self.local_reduction}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"uniformerv2 mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.mlp_dropout < 1.0:
            raise ValueError(f"uniformerv2 mlp_dropout must be in [0, 1), got {self.mlp_dropout}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"uniformerv2 fusion must be one of {FUSIONS}, got {self.fusion!r}")

    @property
    def fused(self) -> bool:
        return self.fusion == "on" or (self.fusion == "auto" and not self.frozen)


def _patch_grid(x: torch.Tensor, ctx: FrameContext, owner: str) -> tuple[torch.Tensor, int, int, int]:
    """Patch tokens of (B*T, L, D) tokens, after checking they fill the context's grid."""
    p = ctx.num_prefix_tokens
    h, w = ctx.grid
    patches = x[:, p:]
    if patches.shape[1] != h * w:
        raise ValueError(f"{owner} expected {h}x{w}={h * w} patch tokens, got {patches.shape[1]}")
    return patches, p, h, w


class LocalMHRA(nn.Module):
    """x + up(dwconv_t(down(bn(x)))) on the patch tokens; prefix tokens unchanged; zero at init."""

    def __init__(self, width: int, hidden: int, kernel_t: int = 3) -> None:
        super().__init__()
        self.norm = TokenBatchNorm(width)      # the official BatchNorm3d(d_model), first in pos_embed
        self.down = nn.Linear(width, hidden)        # a 1x1x1 conv: same function, same default init
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=(kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0),
                              groups=hidden)
        self.up = nn.Linear(hidden, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        patches, p, h, w = _patch_grid(x, ctx, "uniformerv2 local MHRA")
        bt, n, _ = patches.shape
        z = self.down(self.norm(patches))                               # (B*T, N, r)
        z = z.reshape(-1, ctx.num_frames, h, w, z.shape[-1]).permute(0, 4, 1, 2, 3)   # (B, r, T, h, w)
        z = self.conv(z).permute(0, 2, 3, 4, 1).reshape(bt, n, -1)
        return torch.cat([x[:, :p], patches + self.up(z)], dim=1)


class GlobalLayer(DecoderLayer):
    """EVL's query decoder layer (adaptvid.methods.evl.DecoderLayer) with UniFormerV2's init."""

    def __init__(self, width: int, num_heads: int, mlp_dropout: float, mlp_ratio: float) -> None:
        super().__init__(width, num_heads, mlp_dropout, mlp_ratio)
        attn = self.attn
        stacked = torch.empty(3 * width, width)
        nn.init.xavier_uniform_(stacked)           # one draw over the (3D, D) in-projection
        with torch.no_grad():
            for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
                proj.weight.copy_(stacked[i * width:(i + 1) * width])
                proj.bias.zero_()
        for p in (attn.out_proj.weight, attn.out_proj.bias, self.mlp.fc2.weight, self.mlp.fc2.bias):
            nn.init.zeros_(p)
        self.mlp.fc1.reset_parameters()            # PyTorch's default bias ...
        nn.init.xavier_uniform_(self.mlp.fc1.weight)   # ... and a xavier-uniform weight


class UniFormerV2Decoder(nn.Module):
    """The global UniBlock (and the fusion) as a VideoModel decoder over blocks [depth-K, ..., depth-1]."""

    # How the readout uses backbone.head (methods/_readout.py): never — the final norm and projection are unused.
    head_projection = None

    def __init__(self, width: int, num_heads: int, depth: int, config: UniFormerV2Config) -> None:
        super().__init__()
        k = min(config.num_global_layers, depth)
        self.num_layers = k
        self.layers = list(range(depth - k, depth))   # the last entry is the final block: its CLS is fused
        self.out_dim = width
        self.query_token = nn.Parameter(torch.zeros(1, 1, width))
        self.dpe = nn.ModuleList(nn.Conv3d(width, width, kernel_size=3, padding=1, groups=width) for _ in range(k))
        for conv in self.dpe:
            nn.init.zeros_(conv.bias)
        self.blocks = nn.ModuleList(GlobalLayer(width, num_heads, config.mlp_dropout, config.mlp_ratio)
                                    for _ in range(k))
        self.balance = nn.Parameter(torch.zeros(width)) if config.fused else None
        self.norm = nn.LayerNorm(width)

    def fusion_weight(self) -> torch.Tensor:
        """The share of the backbone's mean CLS in the output, per channel (0.5 at init)."""
        return torch.sigmoid(self.balance)

    def frame_tokens(self, i: int, tokens: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        """Block (depth-K+i)'s tokens with the dynamic position encoding added to the patches, (B, T*L, D)."""
        patches, p, h, w = _patch_grid(tokens, ctx, "uniformerv2")
        t = ctx.num_frames
        z = patches.reshape(-1, t, h, w, patches.shape[-1]).permute(0, 4, 1, 2, 3)   # (B, D, T, h, w)
        z = self.dpe[i](z).permute(0, 2, 3, 4, 1).reshape(patches.shape)
        y = torch.cat([tokens[:, :p], patches + z], dim=1)
        return ctx.unfold(y).flatten(1, 2)

    def forward(self, layer_tokens: list[torch.Tensor], ctx: FrameContext, backbone) -> torch.Tensor:
        if len(layer_tokens) != self.num_layers:
            raise ValueError(f"uniformerv2 expected {self.num_layers} layer outputs, got {len(layer_tokens)}")
        batch = layer_tokens[0].shape[0] // ctx.num_frames
        x = self.query_token.repeat(batch, 1, 1)   # a copy, as in EVL (an expanded leaf view confuses hooks)
        for i, block in enumerate(self.blocks):
            x = block(x, self.frame_tokens(i, layer_tokens[i], ctx))
        x = x[:, 0]
        if self.balance is not None:
            if ctx.num_prefix_tokens < 1:
                raise ValueError("uniformerv2 fusion needs a CLS token; this backbone has none (use fusion='off')")
            cls = ctx.unfold(layer_tokens[-1])[:, :, 0].mean(dim=1)     # the final block's raw CLS, mean over time
            weight = self.fusion_weight()
            x = (1 - weight) * x + weight * cls
        return self.norm(x)


def _readout_only_parameters(backbone) -> list[nn.Parameter]:
    """Tower parameters that only ``backbone.head`` uses (final norm, projection), found by autograd."""
    params = [p for p in backbone.tower.parameters() if p.requires_grad]
    if not params:
        return []
    probe = torch.ones(1, backbone.width, dtype=params[0].dtype, device=params[0].device)
    with torch.enable_grad():
        out = backbone.head(probe, project=True)
        grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    return [p for p, g in zip(params, grads) if g is not None]


@register_method(
    "uniformerv2", UniFormerV2Config, family="decoder", claims=("readout",),
    paper="Li et al., UniFormerV2: Unlocking the Potential of Image ViTs for Video Understanding, ICCV 2023",
    help="local temporal-conv MHRA in the blocks + a query decoder with 3D position convs over the last 4 blocks, "
         "fused with the backbone CLS; the whole tower fine-tuned (frozen=true: only the new modules)",
)
def apply_uniformerv2(model, config: UniFormerV2Config) -> None:
    backbone = model.backbone
    if config.local:
        hidden = int(backbone.width // config.local_reduction)
        points = ("before_attn", "before_mlp") if config.double_local else ("before_attn",)
        for slot in backbone.slots:
            for point in points:
                slot.add(point, "uniformerv2_local", LocalMHRA(backbone.width, hidden))
    from ._text_heads import check_linear_readout

    decoder = UniFormerV2Decoder(backbone.width, backbone.num_heads, backbone.depth, config)
    check_linear_readout(model, "uniformerv2", decoder.out_dim)
    model.set_decoder(decoder)
    if isinstance(model.head, nn.Linear):   # the official head Linear keeps PyTorch's default init
        model.head.reset_parameters()
    if not config.frozen:
        backbone.tower.requires_grad_(True)   # trained at the trainer's backbone_lr
        for p in _readout_only_parameters(backbone):
            p.requires_grad_(False)
