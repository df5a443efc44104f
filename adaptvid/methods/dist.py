"""DiST (Qing et al., ICCV 2023): disentangled spatial and temporal learning beside a frozen image tower.

"Disentangling Spatial and Temporal Learning for Efficient Image-to-Video
Transfer Learning". Three parts; only the last two train, and no gradient ever
flows through the image tower:

1. spatial encoder: the frozen tower, run without autograd on the T sparse
   frames; every block's output is recorded;
2. temporal encoder (width 96, temporal kernel 3), on the 2T dense frames:
   its own patchify, a Conv3d 3 -> 96 with kernel 3 x P x P and stride
   1 x P x P (P = the tower's patch size, so its tokens sit on the tower's
   grid), then one block per tower block:
   ``y += dwconv_t(norm(y))`` (depthwise temporal conv, kernel 3) and
   ``y += mlp(norm(y))`` (96 -> 96 -> 96, GELU);
3. integration branch (width 384) on the T sparse frames, one layer per tower
   block i:
   ``z += proj_s(norm(block i output))`` (all tokens, prefix included) and
   ``z += proj_t(norm(temporal block i output, averaged over each pair of
   dense frames))`` (patch tokens; prefix rows get 0), then
   ``z += up(dwconv_t(down(norm(z))))`` (384 -> 96 -> depthwise temporal
   conv, kernel 3 -> 384) and ``z += mlp(norm(z))`` (384 -> 384 -> 384, GELU).
   The output is the final norm of z averaged over frames and tokens
   (``out_dim`` = 384, not projected), then the model's Linear head.

Frames. The model takes clips of 2T frames (build it with ``num_frames=2T``:
16 for the paper's "8+16f" configuration). The temporal encoder sees all of
them; the spatial encoder sees every other frame, frames 0, 2, ..., 2T-2
(``frame_ratio`` = 2). Dense frames 2t and 2t+1 are averaged onto sparse frame
t when the temporal features enter the integration branch.

Decisions. The paper pins: frozen tower on T frames with all 12 layers
recorded and no gradient; temporal encoder of width 96, temporal kernel 3,
its own patchify, on 2T frames; integration branch of width 384 fusing all 12
layers with the temporal encoder. The rest is this implementation's choice,
the simplest that fits (DiST's code has no licence: nothing was read from it
but its published config values — TEMPORAL_DIM 96, INTEGRATION_DIM 384,
TEMPORAL_KERNEL_SIZE 3, TEMPORAL_CONV_MLP_RATIO 1, INTEGRATION_MLP_RATIO 1,
INTEGRATION_TEMPORAL_MLP_RATIO 0.25, all 12 SELECTED_LAYERS — whose names the
block widths above follow):

* the temporal blocks mix over time only (kernel 3x1x1, no spatial kernel);
  spatial context reaches the integration branch from the tower;
* temporal features are brought to the T sparse frames by averaging frame
  pairs; the integration state starts at zero; every Linear and conv keeps
  PyTorch's default init (no zero-init: the branch is not residual to the
  tower's output, so nothing has to start as the identity);
* the paper classifies by similarity to frozen CLIP text embeddings of the
  class names; here the integration output goes to adaptvid's Linear head.
  The official config also sets a temporal patchify kernel of 5
  (T_PATCH_SIZE) and an adaptive pooling over 4 layers (ADA_POOLING_LAYERS)
  whose exact use is not documented outside the code: neither is reproduced.

Protocol notes. DiST needs the raw dense frames, so it replaces the whole
encoding with ``set_video_encoder``: it calls ``backbone.forward_tokens`` on
the sparse frames with ``backbone.context(T, tag="dist-spatial")``, under
``torch.no_grad`` (autograd is on there only if another method made part of
the tower trainable). Not cacheable (the temporal encoder reads pixels).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_method

SPATIAL_TAG = "dist-spatial"


@dataclass
class DiSTConfig:
    temporal_width: int = field(default=96, metadata={"help": "channels of the temporal encoder (the paper's 96)"})
    integration_width: int = field(default=384, metadata={"help": "width of the integration branch (the paper's 384)"})
    kernel_t: int = field(default=3, metadata={
        "help": "temporal kernel of the temporal encoder's patchify and convs and of the integration conv"})
    frame_ratio: int = field(default=2, metadata={
        "help": "dense frames per sparse frame: the spatial encoder sees every frame_ratio-th input frame"})
    temporal_mlp_ratio: float = field(default=1.0, metadata={"help": "hidden width of the temporal encoder MLPs, x96"})
    integration_mlp_ratio: float = field(default=1.0, metadata={"help": "hidden width of the integration MLPs, x384"})
    integration_conv_ratio: float = field(default=0.25, metadata={
        "help": "width of the integration branch's temporal-conv bottleneck, x384"})

    def reframes(self) -> str:
        """What it does to the frames the tower sees (registry.check_clip_length)."""
        return f"runs the image tower on one frame in {self.frame_ratio} only"

    def __post_init__(self) -> None:
        for name in ("temporal_width", "integration_width", "frame_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"dist {name} must be >= 1, got {getattr(self, name)}")
        if self.kernel_t < 1 or self.kernel_t % 2 == 0:
            raise ValueError(f"dist kernel_t must be odd and >= 1, got {self.kernel_t}")
        for name in ("temporal_mlp_ratio", "integration_mlp_ratio", "integration_conv_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"dist {name} must be > 0, got {getattr(self, name)}")


class Mlp(nn.Sequential):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.add_module("fc1", nn.Linear(width, hidden))
        self.add_module("act", nn.GELU())
        self.add_module("fc2", nn.Linear(hidden, width))


def temporal_depthwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A depthwise Conv1d over the frame axis of (B, T, N, C) tokens, at every token position."""
    b, t, n, c = x.shape
    z = conv(x.permute(0, 2, 3, 1).reshape(b * n, c, t))
    return z.reshape(b, n, -1, t).permute(0, 3, 1, 2)


class TemporalBlock(nn.Module):
    """y += dwconv_t(norm(y)); y += mlp(norm(y)) on (B, T', N, C)."""

    def __init__(self, width: int, kernel_t: int, mlp_ratio: float) -> None:
        super().__init__()
        self.conv_norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, kernel_size=kernel_t, padding=kernel_t // 2, groups=width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, round(width * mlp_ratio))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y + temporal_depthwise(self.conv, self.conv_norm(y))
        return y + self.mlp(self.mlp_norm(y))


class TemporalEncoder(nn.Module):
    """Own patchify of the dense frames + one temporal block per tower block; yields every block's output."""

    def __init__(self, width: int, patch_size: int, depth: int, config: DiSTConfig) -> None:
        super().__init__()
        k = config.kernel_t
        self.patch_embed = nn.Conv3d(3, width, kernel_size=(k, patch_size, patch_size),
                                     stride=(1, patch_size, patch_size), padding=(k // 2, 0, 0))
        self.norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(TemporalBlock(width, k, config.temporal_mlp_ratio) for _ in range(depth))

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, T', H, W) -> per block (B, T', h*w, width)."""
        y = self.patch_embed(video)                                     # (B, C, T', h, w)
        y = self.norm(y.flatten(3).permute(0, 2, 3, 1))                 # (B, T', h*w, C)
        outputs = []
        for block in self.blocks:
            y = block(y)
            outputs.append(y)
        return outputs


class IntegrationLayer(nn.Module):
    """Fuses tower block i and temporal block i into the integration state (B, T, L, C)."""

    def __init__(self, width: int, spatial_width: int, temporal_width: int, config: DiSTConfig) -> None:
        super().__init__()
        self.spatial_norm = nn.LayerNorm(spatial_width)
        self.spatial_proj = nn.Linear(spatial_width, width)
        self.temporal_norm = nn.LayerNorm(temporal_width)
        self.temporal_proj = nn.Linear(temporal_width, width)
        hidden = round(width * config.integration_conv_ratio)
        self.conv_norm = nn.LayerNorm(width)
        self.down = nn.Linear(width, hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel_size=config.kernel_t, padding=config.kernel_t // 2, groups=hidden)
        self.up = nn.Linear(hidden, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, round(width * config.integration_mlp_ratio))

    def forward(self, z, spatial: torch.Tensor, temporal: torch.Tensor, prefix: int) -> torch.Tensor:
        """spatial: (B, T, L, D) frozen tokens; temporal: (B, T, N, Ct) on the sparse frames."""
        fused = self.spatial_proj(self.spatial_norm(spatial))
        fused = fused + F.pad(self.temporal_proj(self.temporal_norm(temporal)), (0, 0, prefix, 0))  # prefix rows: 0
        z = fused if z is None else z + fused                            # the state starts at zero
        z = z + self.up(temporal_depthwise(self.conv, self.down(self.conv_norm(z))))
        return z + self.mlp(self.mlp_norm(z))


class DiSTEncoder(nn.Module):
    """The DiST video encoder: ``encoder(video, model) -> (B, integration_width)`` on clips of 2T frames."""

    # How the readout uses backbone.head (methods/_readout.py): never — the final norm and projection are unused.
    head_projection = None

    def __init__(self, spatial_width: int, patch_size: int, depth: int, grid: tuple[int, int],
                 config: DiSTConfig) -> None:
        super().__init__()
        self.frame_ratio = config.frame_ratio
        self.grid = grid
        self.depth = depth
        self.out_dim = config.integration_width
        self.temporal = TemporalEncoder(config.temporal_width, patch_size, depth, config)
        self.integration = nn.ModuleList(
            IntegrationLayer(config.integration_width, spatial_width, config.temporal_width, config)
            for _ in range(depth))
        self.norm = nn.LayerNorm(config.integration_width)

    def spatial_features(self, video: torch.Tensor, model) -> list[torch.Tensor]:
        """Every tower block's output on the sparse frames, each (B, T, L, D); no autograd into the tower."""
        backbone = model.backbone
        sparse = video[:, :, ::self.frame_ratio]
        b, c, t, h, w = sparse.shape
        frames = sparse.transpose(1, 2).reshape(b * t, c, h, w)
        ctx = backbone.context(t, tag=SPATIAL_TAG)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in backbone.parameters())
        with torch.set_grad_enabled(grad):
            _, taken = backbone.forward_tokens(frames, ctx, return_layers=range(backbone.depth))
        return [ctx.unfold(x) for x in taken]

    def forward(self, video: torch.Tensor, model) -> torch.Tensor:
        b, _, frames, height, width = video.shape
        r = self.frame_ratio
        if frames % r:
            raise ValueError(f"dist takes clips of {r}T frames (the spatial encoder sees every {r}th frame), "
                             f"got {frames} frames; use a multiple of {r}")
        if model.backbone.depth != self.depth:
            raise ValueError(f"dist was built for a {self.depth}-block tower, got {model.backbone.depth}")
        spatial = self.spatial_features(video, model)
        temporal = self.temporal(video)                                  # per block (B, 2T, N, Ct)
        n = temporal[0].shape[2]
        prefix = spatial[0].shape[2] - n
        if n != self.grid[0] * self.grid[1] or prefix < 0:
            raise ValueError(f"dist: the temporal encoder's {n} patches do not match the tower's "
                             f"{self.grid[0]}x{self.grid[1]} grid ({spatial[0].shape[2]} tokens)")
        z = None
        for layer, s, y in zip(self.integration, spatial, temporal):
            y = y.reshape(b, frames // r, r, n, -1).mean(dim=2)          # dense frames r*t..r*t+r-1 -> sparse frame t
            z = layer(z, s, y, prefix)
        return self.norm(z).mean(dim=(1, 2))                             # norm, then mean over frames and tokens


@register_method(
    "dist", DiSTConfig, family="side network", claims=("readout", "frames"),
    paper="Qing et al., Disentangling Spatial and Temporal Learning for Efficient Image-to-Video Transfer "
          "Learning, ICCV 2023",
    help="frozen tower on every other frame (no backprop); a 96-wide temporal encoder on all frames and a "
         "384-wide integration branch fusing every block (clips of 2T frames)",
)
def apply_dist(model, config: DiSTConfig) -> None:
    backbone = model.backbone
    if model.num_frames % config.frame_ratio:
        raise ValueError(f"dist takes clips of {config.frame_ratio}T frames; build the model with num_frames a "
                         f"multiple of {config.frame_ratio} (e.g. 16 for the paper's 8+16f), got {model.num_frames}")
    encoder = DiSTEncoder(backbone.width, backbone.patch_size, backbone.depth, backbone.grid, config)
    encoder.reference_frames = max(1, model.num_frames // config.frame_ratio)  # the image model sees T frames
    from ._text_heads import check_linear_readout

    check_linear_readout(model, "dist", encoder.out_dim)
    model.set_video_encoder(encoder)
