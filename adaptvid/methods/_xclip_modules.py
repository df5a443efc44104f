"""X-CLIP's new modules (Ni et al., ECCV 2022): message tokens, the multi-frame integration
transformer and the video-specific prompt generator. Assembled into a model by ``xclip.py``.

Parameter names follow the transformers port (``XCLIPModel``) where it is natural, so the
weight mapping in ``adaptvid/xclip_hf.py`` stays short; the initialisations are the official
code's (``microsoft/VideoX``, X-CLIP ``models/{cct,mit,prompt}.py``), not transformers'.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import FrameContext, attention, merge_heads, split_heads


class QuickGELU(nn.Module):
    """CLIP's ``x * sigmoid(1.702 x)``: the activation of X-CLIP's MIT and prompt-generator MLPs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _trunc_normal_linear(module: nn.Module) -> None:
    """The official MIT / prompt-generator init: every Linear N(0, 0.02) truncated, bias 0; LayerNorm 1, 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SelfAttention(nn.Module):
    """Batch-first multi-head self-attention with separate q/k/v/out projections (all with bias).

    The official code uses ``nn.MultiheadAttention`` (one fused in-projection); separate
    projections hold the same parameters and map one-to-one onto transformers' ``XCLIPAttention``.
    ``reset_like_torch_mha`` draws the init PyTorch gives ``nn.MultiheadAttention``.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"x-clip: attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        self.reset_like_torch_mha()

    def reset_like_torch_mha(self) -> None:
        # nn.MultiheadAttention: xavier-uniform over the fused (3D, D) in-projection, i.e. U(+-sqrt(6 / 4D))
        # on each of q, k, v; zero in-projection and out-projection biases; the out-projection weight keeps
        # nn.Linear's default (already drawn in __init__).
        width = self.q_proj.in_features
        bound = math.sqrt(6.0 / (width + 3 * width))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.zeros_(proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(merge_heads(attention(q, k, v)))


class MessageToken(nn.Module):
    """Cross-frame communication (the ``attn_tokens`` hook of one block).

    Each frame's CLS on the residual stream -> ``message_fc`` -> one message per frame; the T messages
    of a video attend to each other (``msg + message_attn(message_ln(msg))``) and each frame's message
    joins that frame's tokens for this block's spatial attention only. PyTorch default init, as in the
    official code (it never re-initialises these modules).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.message_fc = nn.Linear(width, width)
        self.message_ln = nn.LayerNorm(width)
        self.message_attn = SelfAttention(width, heads)

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        n, _, width = x.shape
        if n % ctx.num_frames:
            raise ValueError(f"x-clip: {n} frames do not split into clips of {ctx.num_frames}")
        msg = self.message_fc(x[:, 0]).reshape(n // ctx.num_frames, ctx.num_frames, width)
        msg = msg + self.message_attn(self.message_ln(msg))
        return msg.reshape(n, 1, width)


class MitBlock(nn.Module):
    """Pre-norm transformer block: LN -> self-attention -> residual, LN -> MLP (QuickGELU) -> residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width)
        self.self_attn = SelfAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width * mlp_ratio), QuickGELU(), nn.Linear(width * mlp_ratio, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class MultiFrameIntegration(nn.Module):
    """MIT: ``mean_t(x + blocks(x + pos))`` over the (B, T, E) frame embeddings; the outer skip is the raw input."""

    def __init__(self, num_frames: int, width: int, layers: int = 1, heads: int = 8) -> None:
        super().__init__()
        self.position_embedding = nn.Parameter(torch.empty(1, num_frames, width))
        self.blocks = nn.ModuleList(MitBlock(width, heads) for _ in range(layers))
        # Official order: the table first, then every Linear (the attention in-projections of
        # nn.MultiheadAttention are not Linear modules there and keep PyTorch's own init).
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        _trunc_normal_linear(self)
        for block in self.blocks:
            attn = block.self_attn
            attn.reset_like_torch_mha()
            nn.init.trunc_normal_(attn.out_proj.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.position_embedding.shape[1]
        if x.shape[1] != frames:
            raise ValueError(f"x-clip: the multi-frame integration transformer was built for {frames} frames but got "
                             f"{x.shape[1]}; build the model with num_frames={x.shape[1]}")
        h = x + self.position_embedding.to(x.dtype)
        for block in self.blocks:
            h = block(h)
        return (x + h).mean(dim=1)


class CrossAttention(nn.Module):
    """Text queries attend to visual tokens: q/k/v projections without bias, output projection with bias."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"x-clip: prompt generator width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q_proj(queries), self.heads)
        k, v = split_heads(self.k_proj(context), self.heads), split_heads(self.v_proj(context), self.heads)
        return self.proj(merge_heads(attention(q, k, v)))


class PromptLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, heads)
        self.norm3 = nn.LayerNorm(width)   # the official name (there is no norm2)
        self.mlp = nn.Sequential(nn.Linear(width, width * 4), QuickGELU(), nn.Linear(width * 4, width))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        text = text + self.cross_attn(self.norm1(text), visual)
        return text + self.mlp(self.norm3(text))


class VideoSpecificPrompt(nn.Module):
    """The prompt generator: class texts (B, C, E) cross-attend the video's visual tokens (B, L, E).

    Returns ``alpha * text'`` (the caller adds it to the text); ``alpha`` is a learned E-vector, 0.1 at init.
    """

    def __init__(self, width: int, layers: int = 2, heads: int = 8, alpha: float = 0.1) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(width)   # on the visual side
        self.layers = nn.ModuleList(PromptLayer(width, heads) for _ in range(layers))
        self.alpha = nn.Parameter(torch.full((width,), float(alpha)))
        _trunc_normal_linear(self)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        visual = self.layernorm(visual)
        for layer in self.layers:
            text = layer(text, visual)
        return self.alpha * text


def scaled_cosine_per_video(video: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """``exp(logit_scale) * cos`` of (B, E) videos with their own (B, C, E) texts -> (B, C)."""
    video, texts = F.normalize(video, dim=-1), F.normalize(texts, dim=-1)
    return logit_scale.exp() * torch.einsum("be,bce->bc", video, texts)
