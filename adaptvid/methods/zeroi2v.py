"""ZeroI2V (Li, Zhu, Wang, ECCV 2024): temporal modelling and adaptation that merge away for inference.

Two parts, both free at inference once merged:

* STDHA (spatio-temporal dual-head attention): after the frozen QKV projection,
  the first ``D / shift_div`` channels of the keys and values of frame t are taken
  from frame t-1 and the next ``D / shift_div`` from frame t+1 (every token, CLS
  included; the first / last frame keep their own channels). On ViT-B/16 with
  ``shift_div=12`` that is exactly one head looking back and one looking ahead.
  No parameters, no FLOPs.
* Linear adapters (no activation): ``x + s * up(dropout(down(x)))`` with
  ``down: D -> D/4`` (trunc-normal 0.02, bias 0) and ``up: D/4 -> D`` (weight
  and bias zero, so each adapter starts as the identity), ``s = 0.5``. Four per
  block: before the attention's in-projection (on the normed tokens), after its
  output projection, before the MLP (on the normed tokens) and after the MLP.

Also a zero-initialised temporal embedding ``(1, T, D)`` added to every token
before the pre-norm, and the final norm is trained; readout is the normed CLS
of every frame, averaged over time (I3D head).

Being affine, every adapter folds into the frozen linear next to it
(:func:`merge_zeroi2v`, through ``adaptvid.merge(model)``): the merged model is
the plain tower plus the channel shift plus the temporal embedding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..backbones import FrameContext
from ..backbones.base import attention, merge_heads, split_heads
from ._blocks import Bottleneck, TemporalEmbedding
from ._readout import request_readout
from .registry import register_method

NAME = "zeroi2v"


@dataclass
class ZeroI2VConfig:
    bottleneck_ratio: float = field(default=0.25, metadata={
        "help": "adapter width as a fraction of the token width (the paper's 0.25: 192 on ViT-B/16)"})
    adapter_scale: float = field(default=0.5, metadata={"help": "scale of each adapter's branch: x + scale * adapter(x)"})
    adapter_dropout: float = field(default=0.1, metadata={"help": "dropout between the adapters' two linears (training only)"})
    shift_div: int = field(default=12, metadata={
        "help": "STDHA: D / shift_div key/value channels come from frame t-1 and as many from t+1; 0 turns the shift off"})

    def clip_bound(self) -> str:
        """What is built for whole num_frames-frame clips (registry.check_clip_length)."""
        return "zeroi2v's temporal embedding"

    def __post_init__(self) -> None:
        if not self.bottleneck_ratio > 0:
            raise ValueError(f"zeroi2v bottleneck_ratio must be > 0, got {self.bottleneck_ratio}")
        if not 0 <= self.adapter_dropout < 1:
            raise ValueError(f"zeroi2v adapter_dropout must be in [0, 1), got {self.adapter_dropout}")
        if self.shift_div < 0 or self.shift_div == 1:
            raise ValueError(f"zeroi2v shift_div must be 0 (no shift) or >= 2, got {self.shift_div}")


# -- STDHA ---------------------------------------------------------------------------------

def shift_fold(width: int, shift_div: int) -> int:
    """Channels shifted each way: ``width // shift_div`` (0 when the shift is off)."""
    return 0 if shift_div == 0 else width // shift_div


def temporal_shift(x: torch.Tensor, num_frames: int, fold: int) -> torch.Tensor:
    """Shift packed channels over time: ``(B*T, L, C) -> (B*T, L, C)``.

    Channels ``[0, fold)`` of frame t take frame t-1's values, channels
    ``[fold, 2*fold)`` take frame t+1's; the first (last) frame keeps its own
    values in the first (second) group — a copy, not zero padding.
    """
    if fold == 0 or num_frames == 1:
        return x
    n, length, channels = x.shape
    if n % num_frames:
        raise ValueError(f"temporal_shift: {n} frames are not a whole number of {num_frames}-frame clips")
    if 2 * fold > channels:
        raise ValueError(f"temporal_shift: 2 x {fold} shifted channels exceed the width {channels}")
    v = x.reshape(n // num_frames, num_frames, length, channels)
    back = torch.cat([v[:, :1, :, :fold], v[:, :-1, :, :fold]], dim=1)                        # from t-1
    ahead = torch.cat([v[:, 1:, :, fold:2 * fold], v[:, -1:, :, fold:2 * fold]], dim=1)       # from t+1
    return torch.cat([back, ahead, v[..., 2 * fold:]], dim=-1).reshape(n, length, channels)


def shift_heads(x: torch.Tensor, num_frames: int, fold: int) -> torch.Tensor:
    """:func:`temporal_shift` on ``(B*T, heads, L, head_dim)`` keys or values (channels are head-major)."""
    if fold == 0 or num_frames == 1:
        return x
    return split_heads(temporal_shift(merge_heads(x), num_frames, fold), x.shape[1])


# -- modules -------------------------------------------------------------------------------

def linear_adapter(width: int, hidden: int, scale: float = 0.5, dropout: float = 0.1) -> Bottleneck:
    """ZeroI2V's adapter: ``x + scale * up(dropout(down(x)))``, no activation, so it is affine in eval mode
    (``Bottleneck.affine``) and folds into the neighbouring frozen linear layers."""
    return Bottleneck(width, hidden, activation=False, dropout=dropout, scale=scale, skip=True)


class STDHAttention(nn.Module):
    """Replaces a block's self-attention: T-adapter -> frozen QKV -> K/V shift -> SDPA -> frozen out-proj -> S-adapter.

    The frozen projections are reached through the backbone's block view at call
    time (``view.qkv`` / ``view.attn_out``), so nothing is copied. After merging,
    the adapters are gone (folded into those projections) and only the shift remains.
    """

    def __init__(self, backbone, index: int, fold: int, t_adapter: Optional[Bottleneck],
                 s_adapter: Optional[Bottleneck]) -> None:
        super().__init__()
        object.__setattr__(self, "_backbone", backbone)  # a handle, not a submodule
        self.index = index
        self.fold = fold
        self.t_adapter = t_adapter
        self.s_adapter = s_adapter

    def forward(self, xn: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        view = self._backbone.views[self.index]
        if self.t_adapter is not None:
            xn = self.t_adapter(xn)
        q, k, v = view.qkv(xn)
        k = shift_heads(k, ctx.num_frames, self.fold)
        v = shift_heads(v, ctx.num_frames, self.fold)
        h = view.attn_out(attention(q, k, v))
        if self.s_adapter is not None:
            h = self.s_adapter(h)
        return h

    def extra_repr(self) -> str:
        return f"block={self.index}, shifted_channels={self.fold} each way"


# -- the library modules the adapters fold into -------------------------------------------

def _in_projections(attn: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(module, weight name, bias name) of every linear map from the normed tokens to q, k, v."""
    if isinstance(attn, nn.MultiheadAttention):
        if attn.in_proj_weight is None:
            raise ValueError("zeroi2v merge: nn.MultiheadAttention with separate q/k/v weights is not supported")
        return [(attn, "in_proj_weight", "in_proj_bias")]
    if all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):  # transformers
        return [(getattr(attn, n), "weight", "bias") for n in ("q_proj", "k_proj", "v_proj")]
    if isinstance(getattr(attn, "qkv", None), nn.Linear):  # timm
        if getattr(attn, "q_bias", None) is not None or getattr(attn, "v_bias", None) is not None:
            raise ValueError("zeroi2v merge: attention with separate q/v biases is not supported")
        return [(attn.qkv, "weight", "bias")]
    raise ValueError(f"zeroi2v merge: unsupported attention module {type(attn).__name__}")


def _out_projection(attn: nn.Module) -> nn.Linear:
    for name in ("out_proj", "proj"):  # open_clip / transformers, timm
        if isinstance(getattr(attn, name, None), nn.Linear):
            return getattr(attn, name)
    raise ValueError(f"zeroi2v merge: no output projection found on {type(attn).__name__}")


def _mlp_linears(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    for first, last in (("c_fc", "c_proj"), ("fc1", "fc2")):  # open_clip, transformers / timm
        if isinstance(getattr(mlp, first, None), nn.Linear) and isinstance(getattr(mlp, last, None), nn.Linear):
            return getattr(mlp, first), getattr(mlp, last)
    raise ValueError(f"zeroi2v merge: unsupported MLP {type(mlp).__name__} (expected c_fc/c_proj or fc1/fc2)")


# -- folding ---------------------------------------------------------------------------------

def affine_before(weight: torch.Tensor, bias: Optional[torch.Tensor], A: torch.Tensor, a: torch.Tensor):
    """``y = W (A x + a) + b``  ->  ``(W A, W a + b)``, computed in float64."""
    w = weight.double()
    return w @ A, w @ a + (bias.double() if bias is not None else 0)


def affine_after(weight: torch.Tensor, bias: Optional[torch.Tensor], A: torch.Tensor, a: torch.Tensor):
    """``y = A (W x + b) + a``  ->  ``(A W, A b + a)``, computed in float64."""
    w = weight.double()
    return A @ w, (A @ bias.double() if bias is not None else 0) + a


@torch.no_grad()
def _write(module: nn.Module, weight_name: str, bias_name: str, new_weight: torch.Tensor, new_bias: torch.Tensor) -> None:
    weight = getattr(module, weight_name)
    weight.copy_(new_weight.to(weight.dtype))
    bias = getattr(module, bias_name, None)
    if bias is None:  # a bias-free linear gains a (frozen) bias: the adapters' offsets must go somewhere
        setattr(module, bias_name, nn.Parameter(new_bias.to(weight.dtype), requires_grad=False))
    else:
        bias.copy_(new_bias.to(bias.dtype))


def fold_before(module: nn.Module, A: torch.Tensor, a: torch.Tensor, weight: str = "weight", bias: str = "bias") -> None:
    """Fold the affine map ``x -> A x + a``, applied to a linear's input, into the linear, in place.

    ``module`` is an ``nn.Linear`` or any module holding a (weight, bias) pair under
    the given names (e.g. ``nn.MultiheadAttention``'s ``in_proj_weight`` / ``in_proj_bias``).
    """
    w, b = affine_before(getattr(module, weight), getattr(module, bias, None), A, a)
    _write(module, weight, bias, w, b)


def fold_after(module: nn.Module, A: torch.Tensor, a: torch.Tensor, weight: str = "weight", bias: str = "bias") -> None:
    """Fold the affine map ``y -> A y + a``, applied to a linear's output, into the linear, in place."""
    w, b = affine_after(getattr(module, weight), getattr(module, bias, None), A, a)
    _write(module, weight, bias, w, b)


# -- merging and registration ---------------------------------------------------------------

def merge_zeroi2v(model, config: ZeroI2VConfig) -> None:
    """Fold every adapter into the frozen linears next to it, in place, and drop the adapters.

    T-adapter -> the attention's in-projection (input side); S-adapter -> its output
    projection (output side); MLP adapters -> the MLP's first linear (input side)
    and last linear (output side). The shift stays (an attention module with no
    parameters; with ``shift_div=0`` it goes too, and the block runs the library's
    own forward again), as do the temporal embedding and the trained final norm.
    """
    backbone = model.backbone
    for view, slot in zip(backbone.views, backbone.slots):
        stdha = slot.attention[NAME]
        first, last = _mlp_linears(view.mlp)
        if stdha.t_adapter is not None:
            A, a = stdha.t_adapter.affine()
            for module, weight, bias in _in_projections(view.attn_module):
                fold_before(module, A, a, weight, bias)
            stdha.t_adapter = None
        if stdha.s_adapter is not None:
            fold_after(_out_projection(view.attn_module), *stdha.s_adapter.affine())
            stdha.s_adapter = None
        fold_before(first, *slot.mlp_in[NAME].affine())
        fold_after(last, *slot.mlp_out[NAME].affine())
        del slot.mlp_in[NAME]
        del slot.mlp_out[NAME]
        if stdha.fold == 0:
            del slot.attention[NAME]


@register_method(
    NAME, ZeroI2VConfig, family="adapter", claims=("attention",),
    paper="Li, Zhu, Wang. ZeroI2V: Zero-Cost Adaptation of Pre-trained Transformers from Image to Video. ECCV 2024",
    help="K/V channel shift across frames (STDHA) + 4 linear adapters per block, mergeable into the frozen weights",
    merge=merge_zeroi2v,
)
def apply_zeroi2v(model, config: ZeroI2VConfig) -> None:
    backbone = model.backbone
    width = backbone.width
    hidden = max(1, int(width * config.bottleneck_ratio))
    fold = shift_fold(width, config.shift_div)
    if config.shift_div and fold == 0:
        raise ValueError(f"zeroi2v shift_div={config.shift_div} shifts no channel on width {width}; "
                         f"use shift_div <= {width // 2} or 0 (no shift)")

    def adapter() -> Bottleneck:
        return linear_adapter(width, hidden, config.adapter_scale, config.adapter_dropout)

    from .lora import check_attention_sees_lora

    check_attention_sees_lora(model, NAME, range(backbone.depth))
    for index, (view, slot) in enumerate(zip(backbone.views, backbone.slots)):
        if view.qkv is None or view.attn_out is None:
            raise ValueError(f"zeroi2v: block {index} of {backbone.name!r} offers no q/k/v handles "
                             f"({type(view.attn_module).__name__}); STDHA needs them")
        slot.add("attention", NAME, STDHAttention(backbone, index, fold, adapter(), adapter()))
        slot.add("mlp_in", NAME, adapter())
        slot.add("mlp_out", NAME, adapter())
    backbone.before_pre_norm[NAME] = TemporalEmbedding(model.num_frames, width, NAME)
    model.train_tower_parameters(*backbone.final_norms())
    # The paper's readout: ln_post(CLS) per frame, mean over time (I3D head), no CLIP projection.
    request_readout(model, NAME, "embed-mean", project=False)
