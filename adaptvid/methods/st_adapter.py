"""ST-Adapter (Pan et al., NeurIPS 2022): a depthwise 3D-conv bottleneck on the residual stream.

x <- x + up(dwconv3d(down(x))) on the patch tokens; prefix (CLS) tokens pass
unchanged. No non-linearity. The conv (weight and bias) and both linear biases
start at zero, so the adapted model starts as the image model exactly.

Readout: ST-Adapter's own is ``token-mean`` without the projection. Composed with a method that
reads per-frame embeddings (ATP's frame selector, a temporal transformer, AIM, ZeroI2V, a text
classifier over the mean of frame embeddings), the model keeps ``embed-mean`` — in any order, since
the registry applies ST-Adapter before a readout owner — and the adapters feed that readout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones import FrameContext
from ._readout import request_readout
from .registry import register_method

PLACEMENTS = {"mlp": ("before_mlp",), "attn+mlp": ("before_attn", "before_mlp")}


@dataclass
class STAdapterConfig:
    bottleneck: int = field(default=384, metadata={"help": "adapter width (the paper's 384 on ViT-B/16)"})
    placement: str = field(default="mlp", metadata={
        "help": "'mlp': one adapter before the MLP of every block (12x384, Kinetics); "
                "'attn+mlp': before attention and before the MLP (24x384, SSv2)"})
    kernel_t: int = field(default=3, metadata={"help": "temporal kernel size of the depthwise conv"})

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"st-adapter placement must be one of {sorted(PLACEMENTS)}, got {self.placement!r}")
        if self.bottleneck < 1 or self.kernel_t < 1 or self.kernel_t % 2 == 0:
            raise ValueError("st-adapter needs bottleneck >= 1 and an odd kernel_t >= 1")


class STAdapter(nn.Module):
    def __init__(self, width: int, bottleneck: int, kernel_t: int = 3) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.conv = nn.Conv3d(bottleneck, bottleneck, kernel_size=(kernel_t, 1, 1),
                              padding=(kernel_t // 2, 0, 0), groups=bottleneck)
        self.up = nn.Linear(bottleneck, width)
        for p in (self.conv.weight, self.conv.bias, self.down.bias, self.up.bias):
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        p = ctx.num_prefix_tokens
        h, w = ctx.grid
        patches = x[:, p:]
        bt, n, _ = patches.shape
        if n != h * w:
            raise ValueError(f"st-adapter expected {h}x{w}={h * w} patch tokens, got {n}")
        z = self.down(patches)                                   # (B*T, N, r)
        z = z.reshape(-1, ctx.num_frames, h, w, z.shape[-1])     # (B, T, h, w, r)
        z = self.conv(z.permute(0, 4, 1, 2, 3))                  # (B, r, T, h, w)
        z = z.permute(0, 2, 3, 4, 1).reshape(bt, n, -1)
        return torch.cat([x[:, :p], patches + self.up(z)], dim=1)


@register_method(
    "st-adapter", STAdapterConfig, family="adapter", aliases=("adapter",),
    paper="Pan et al., ST-Adapter: Parameter-Efficient Image-to-Video Transfer Learning, NeurIPS 2022",
    help="depthwise temporal-conv bottleneck adapters in every block; backbone frozen",
)
def apply_st_adapter(model, config: STAdapterConfig) -> None:
    backbone = model.backbone
    for slot in backbone.slots:
        for point in PLACEMENTS[config.placement]:
            slot.add(point, "st_adapter", STAdapter(backbone.width, config.bottleneck, config.kernel_t))
    # The paper's readout: CLS averaged over time, then the frozen final norm; no CLIP projection. A
    # preference: a method that reads per-frame embeddings (a temporal aggregator, AIM, a text classifier
    # over the frame mean) keeps embed-mean (methods/_readout.py).
    request_readout(model, "st-adapter", "token-mean", project=False)
