"""AIM (Yang et al., ICLR 2023): the frozen attention reused along time, plus three bottleneck adapters per block.

Per block, in this order (x: the residual stream, frames folded into the batch):

1. temporal:  tokens regrouped (B*T, N, D) -> (B*N, T, D), all N tokens including CLS; then
   ``T_Adapter(attn(norm1(.)))`` with the block's *frozen* norm1 and attention; regrouped back and
   added to x through drop path. (``num_tadapter=2``: a second adapter, with skip, between norm1
   and the attention — ``T_Adapter(attn(T_Adapter_in(norm1(.))))``.)
2. spatial:   ``x + S_Adapter(attn(norm1(x)))``; S_Adapter keeps a skip, ``h + adapter(h)``; no drop path.
3. joint:     ``xn = norm2(x); x + mlp(xn) + drop_path(scale * MLP_Adapter(xn))``.

Adapter = Linear(D, ratio*D) -> GELU (exact) -> Linear(ratio*D, D); every Linear trunc-normal
std 0.02, bias 0, then the second Linear's weight and bias zeroed, so every adapter starts at
zero output and the model starts as the image model. A zero-init temporal embedding (1, T, D)
is added to every token (CLS included) before the pre-norm. Readout: final norm on each
frame's CLS, mean over time, dropout, linear head (the I3D head, fc N(0, 0.01)). Trained:
adapters, temporal embedding, the tower's final norm, the head.

In adaptvid's hook points: temporal = ``before_attn``; S_Adapter = ``attn_branch``;
MLP adapter = ``mlp_parallel``; temporal embedding = the backbone's ``before_pre_norm``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones import BlockView, FrameContext, attention
from ._blocks import Bottleneck, TemporalEmbedding, bottleneck_width
from ._readout import request_readout
from .registry import register_method

DROP_PATH_MASKS = ("token", "video")


@dataclass
class AIMConfig:
    ratio: float = field(default=0.25, metadata={
        "help": "adapter bottleneck width as a fraction of the token width (0.25: 768 -> 192 on ViT-B)"})
    scale: float = field(default=0.5, metadata={
        "help": "scale of the MLP-parallel adapter (0.5 in the K400 config, 1.0 in the SSv2 config)"})
    drop_path: float = field(default=0.2, metadata={
        "help": "largest drop-path rate (linear 0 -> drop_path over the blocks), on the temporal branch "
                "and the MLP adapter only"})
    temporal_embedding: bool = field(default=True, metadata={
        "help": "add a zero-init learnable temporal embedding (1, T, D) to every token before the pre-norm"})
    num_tadapter: int = field(default=1, metadata={
        "help": "temporal adapters per block: 1 (K400 config) or 2 (SSv2 config: a second adapter, with skip, "
                "before the temporal attention)"})
    drop_path_mask: str = field(default="token", metadata={
        "help": "'token': one drop-path draw per token position shared by the whole batch, as the official "
                "sequence-first code does; 'video': one draw per video (standard stochastic depth)"})

    def clip_bound(self) -> str:
        """What is built for whole num_frames-frame clips (registry.check_clip_length)."""
        return "aim's temporal embedding (temporal_embedding=False leaves it out)" if self.temporal_embedding else ""

    def __post_init__(self) -> None:
        if not 0 < self.ratio:
            raise ValueError(f"aim ratio must be > 0, got {self.ratio}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"aim drop_path must be in [0, 1), got {self.drop_path}")
        if self.num_tadapter not in (1, 2):
            raise ValueError(f"aim num_tadapter must be 1 or 2, got {self.num_tadapter}")
        if self.drop_path_mask not in DROP_PATH_MASKS:
            raise ValueError(f"aim drop_path_mask must be one of {DROP_PATH_MASKS}, got {self.drop_path_mask!r}")


def aim_adapter(width: int, ratio: float, skip: bool) -> Bottleneck:
    """AIM's adapter: Linear(D, ratio*D) -> GELU -> Linear(ratio*D, D), trunc-normal down-projection, zero
    up-projection (the model starts as the image model). ``skip``: h + adapter(h)."""
    return Bottleneck(width, bottleneck_width(width, ratio, "aim"), skip=skip)


class DropPath(nn.Module):
    """Stochastic depth on a (B*T, N, D) branch, rescaled by 1/keep; the identity in eval or at rate 0.

    ``mask="token"`` draws one keep/drop per token position for the whole batch (shape (1, N, 1)):
    the official code runs sequence-first, (N, B*T, D), and timm's DropPath draws along dim 0.
    ``mask="video"`` draws one per video, shared by its frames.
    """

    def __init__(self, rate: float, mask: str = "token") -> None:
        super().__init__()
        self.rate = float(rate)
        self.mask = mask

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        if self.mask == "token":
            shape = (1, x.shape[1], 1)
            draw = x.new_empty(shape).bernoulli_(keep)
        else:
            draw = x.new_empty(x.shape[0] // num_frames, 1, 1, 1).bernoulli_(keep)
            draw = draw.expand(-1, num_frames, 1, 1).reshape(x.shape[0], 1, 1)
        return x * draw.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}, mask={self.mask}"


class TemporalAdaptation(nn.Module):
    """``before_attn``: x + drop_path(T_Adapter(attn(norm1(x regrouped along time)))), frozen norm1 and attention."""

    def __init__(self, view: BlockView, width: int, ratio: float, num_tadapter: int, drop_path: DropPath) -> None:
        super().__init__()
        # BlockView is a plain dataclass, not a Module: the frozen norm1/attention stay out of this
        # module's parameters and state (they belong to the tower).
        self.view = view
        self.adapter_in = aim_adapter(width, ratio, skip=True) if num_tadapter == 2 else None
        self.adapter = aim_adapter(width, ratio, skip=False)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        bt, n, d = x.shape
        t = ctx.num_frames
        if self.adapter_in is None and self._attention_through_handles():
            # norm1, the projections and the adapter act per token: only the attention needs the tokens
            # grouped along time, so q/k/v are regrouped (fused SDPA) instead of the residual stream twice.
            xt = self.adapter(self._temporal_attention(self.view.norm1(x), t))
        else:
            xt = x.reshape(bt // t, t, n, d).transpose(1, 2).reshape(-1, t, d)   # (B*N, T, D)
            xt = self.view.norm1(xt)
            if self.adapter_in is not None:
                xt = self.adapter_in(xt)
            xt = self.adapter(self.view.attn(xt))
            xt = xt.reshape(bt // t, n, t, d).transpose(1, 2).reshape(bt, n, d)  # back to (B*T, N, D)
        # No layer scale (view.residual1) here: the zero-init adapter learns its own scale.
        return x + self.drop_path(xt, t)

    def _attention_through_handles(self) -> bool:
        """The q/k/v handles compute what ``view.attn`` computes: offered, no peft layer in the block (looked up
        on each call: lora may wrap it after aim was applied, and open_clip's fused LoRA is seen by
        ``view.attn`` only), no attention dropout in training."""
        view = self.view
        if view.qkv is None or view.attn_out is None or any(hasattr(m, "get_base_layer") for m in view.block.modules()):
            return False
        module = view.attn_module
        drop = getattr(module, "attn_drop", None)   # timm: a Dropout module; torch MHA, transformers: a float
        rate = drop.p if isinstance(drop, nn.Dropout) else float(getattr(module, "dropout", 0.0) or 0.0)
        return not (self.training and rate > 0)

    def _temporal_attention(self, xn: torch.Tensor, t: int) -> torch.Tensor:
        """The frozen attention over each token position's T frames: (B*T, N, D) in and out."""
        bt, n, _ = xn.shape
        q, k, v = self.view.qkv(xn)                                   # (B*T, heads, N, hd)
        heads, hd = q.shape[1], q.shape[3]

        def along_time(z):   # (B*T, heads, N, hd) -> (B*N, heads, T, hd)
            return z.reshape(bt // t, t, heads, n, hd).permute(0, 3, 2, 1, 4).reshape(-1, heads, t, hd)

        o = attention(along_time(q), along_time(k), along_time(v))   # (B*N, heads, T, hd)
        # back to frames: (B*T, N, heads, hd) in memory, handed over as the (B*T, heads, N, hd) view
        o = o.reshape(bt // t, n, heads, t, hd).permute(0, 3, 1, 2, 4).reshape(bt, n, heads, hd)
        return self.view.attn_out(o.transpose(1, 2))


class SpatialAdapter(nn.Module):
    """``attn_branch``: h -> S_Adapter(h) = h + adapter(h), the spatial attention's output before its residual add."""

    def __init__(self, width: int, ratio: float) -> None:
        super().__init__()
        self.adapter = aim_adapter(width, ratio, skip=True)

    def forward(self, h: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        return self.adapter(h)


class MLPAdapter(nn.Module):
    """``mlp_parallel``: norm2(x) -> drop_path(scale * MLP_Adapter(norm2(x))), added beside the frozen MLP.

    run_block adds this to the MLP output and passes the sum through ``view.residual2`` (the
    identity in CLIP towers; timm's ls2 / drop_path2 where the tower has them), so on a
    layer-scaled timm tower the adapter is scaled by ls2 as well.
    """

    def __init__(self, width: int, ratio: float, scale: float, drop_path: DropPath) -> None:
        super().__init__()
        self.adapter = aim_adapter(width, ratio, skip=False)
        self.scale = scale
        self.drop_path = drop_path

    def forward(self, xn: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        return self.drop_path(self.scale * self.adapter(xn), ctx.num_frames)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


@register_method(
    "aim", AIMConfig, family="adapter",
    paper="Yang, Zhu, Xie, Zhang, Chen, Li. AIM: Adapting Image Models for Efficient Video Action Recognition, "
          "ICLR 2023",
    help="frozen attention reused along time + temporal, spatial and MLP-parallel adapters; temporal embedding",
)
def apply_aim(model, config: AIMConfig) -> None:
    backbone = model.backbone
    width, depth = backbone.width, backbone.depth
    rates = [r.item() for r in torch.linspace(0, config.drop_path, depth)]
    for view, slot, rate in zip(backbone.views, backbone.slots, rates):
        # The block's one rate on its temporal branch and its MLP adapter (independent draws).
        slot.add("before_attn", "aim_temporal", TemporalAdaptation(
            view, width, config.ratio, config.num_tadapter, DropPath(rate, config.drop_path_mask)))
        slot.add("attn_branch", "aim_spatial", SpatialAdapter(width, config.ratio))
        slot.add("mlp_parallel", "aim_mlp", MLPAdapter(
            width, config.ratio, config.scale, DropPath(rate, config.drop_path_mask)))
    if config.temporal_embedding:
        backbone.before_pre_norm["aim"] = TemporalEmbedding(model.num_frames, width, owner="aim")
    # The final norm trains, at the adapters' learning rate (not backbone_lr), as in the official run.
    model.train_tower_parameters(*backbone.final_norms())
    # The paper's readout: final norm on each frame's CLS, mean over time, no CLIP projection
    # (the final norm is per token, so "norm then mean" is embed-mean, not token-mean).
    request_readout(model, "aim", "embed-mean", project=False)
    if isinstance(model.head, nn.Linear):  # the I3D head's fc_cls init (a text classifier has none)
        nn.init.normal_(model.head.weight, std=0.01)
        nn.init.zeros_(model.head.bias)
