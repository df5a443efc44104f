"""DualPath (Park, Lee, Sohn, CVPR 2023): one frozen image tower, a spatial path and a temporal path.

Written from the paper; the official repository (park-jungin/DualPath) carries no licence, so
nothing here is taken from it. Where its released code differs from this module, the docstrings
say how.

What each path sees, for a clip of T frames ``(B, C, T, H, W)``:

* **spatial path**: ``spatial_frames`` (Ts, 8 in the paper) full-resolution frames, every
  (T/Ts)-th frame starting at frame 0 (frames 0, 4, 8, .., 28 of 32);
* **temporal path**: all T frames, in consecutive groups of ``grid * grid`` (g²; the paper's
  frameset is 4 x 4 = 16 frames). Each frame is downscaled to ``(H/g, W/g)`` (bilinear,
  antialiased) and the g² frames of a group are tiled row-major into one ``H x W`` image, frame k
  at tile row ``k // g``, column ``k % g``: Tt = T/g² "grid framesets" per clip. The tower's
  ordinary spatial self-attention then relates tokens of different frames.

Both paths run the same frozen weights, through ``VideoModel.set_video_encoder``, with frame
contexts tagged ``"spatial"`` / ``"temporal"`` (``ctx.num_frames`` = Ts or Tt images per clip).
Every DualPath module looks at the tag and is the identity on the other path (and on an untagged
run, which is the plain image tower).

Per block (x: the residual stream; xn = norm1(x); LN2 = norm2):

* spatial path, adapters *parallel* to the frozen sub-layers:
  ``x = x + MHSA(xn) + A_s1(xn)``, then ``x = x + MLP(LN2 x) + A_s2(LN2 x)``;
* temporal path, adapters *serial* to them (before and after MHSA, after the MLP):
  ``x = x + A_t2(MHSA(A_t1(xn)))``, then ``x = x + A_t3(MLP(LN2 x))``.

Bottleneck = Linear(D, 0.25 D) -> GELU -> Dropout(0.1) -> Linear(0.25 D, D); the down-projection
keeps PyTorch's default Linear init, both biases and the up-projection's weight start at 0. A
parallel adapter adds its output; a serial adapter keeps a skip, ``h + adapter(h)``, so with the
zero up-projection both paths start exactly as the frozen image model. (The released code gives
its serial adapters no skip — the temporal path's blocks then start as the identity, since
MHSA sees an all-zero input — ``serial_skip=False`` reproduces that.)

Temporal position embedding: a learned table, one D-vector per input frame (T x D), zero at
init, added before the pre-norm to every patch token of the temporal path: the token of tile k
in frameset j (the tile its patch's centre lies in) gets entry ``j * g² + k``. Prefix (CLS)
tokens get none. (The released code adds a fixed sinusoid of the tile index instead, and
replaces CLIP's position embedding on that path by a new, randomly initialised, trained one; it
also trains CLIP's class and position embeddings. Here the tower's own embeddings stay frozen.)

Readout (as the paper: the mean CLS of each path, concatenated, into an MLP head): each image's
final CLS through the tower's head — the final norm and, with ``projection`` (as the released code
does on CLIP), the frozen projection — averaged over the path's images; [temporal, spatial]
concatenated (2E) -> Linear(2E, E) -> GELU -> (head dropout) -> Linear(E, classes). The first
Linear and the GELU sit in the video encoder (``out_dim = E``), the last Linear is the model's
head. Trained: the five adapters per block, the temporal embedding and the head; the tower
(final norm and projection included) stays frozen.

In adaptvid's hook points: ``A_s1`` and ``A_t1`` both need norm1(x) and sit around the frozen
attention, so one ``attention`` module runs the frozen MHSA with them (the protocol has no hook
beside, or in front of, the attention on the normed tokens); ``A_t2`` = ``attn_branch``;
``A_s2`` = ``mlp_parallel``; ``A_t3`` = ``mlp_out``; the temporal embedding = the backbone's
``before_pre_norm``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import BlockView, FrameContext
from ._blocks import Bottleneck, bottleneck_width
from .registry import register_method

SPATIAL = "spatial"
TEMPORAL = "temporal"


@dataclass
class DualPathConfig:
    spatial_frames: int = field(default=8, metadata={
        "help": "full-resolution frames on the spatial path (every T/Ts-th input frame; 8 in the paper)"})
    grid: int = field(default=4, metadata={
        "help": "frameset grid g: g*g consecutive frames, each downscaled by 1/g, tiled into one image "
                "(4 in the paper: 16 frames per frameset); the clip's frames must be a multiple of g*g"})
    ratio: float = field(default=0.25, metadata={
        "help": "adapter bottleneck width as a fraction of the token width (0.25: 768 -> 192 on ViT-B)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout inside every adapter, after the activation"})
    serial_skip: bool = field(default=True, metadata={
        "help": "temporal (serial) adapters keep a skip, h + adapter(h), so the model starts as the image model; "
                "false: no skip, as the released code (the temporal path's blocks then start as the identity)"})
    temporal_embedding: bool = field(default=True, metadata={
        "help": "learned zero-init embedding of each token's frame (T x D) on the temporal path, before the pre-norm"})
    projection: bool = field(default=True, metadata={
        "help": "read each path's CLS through the final norm and the frozen CLIP projection (false: final norm only)"})

    def reframes(self) -> str:
        """What it does to the frames the tower sees (registry.check_clip_length)."""
        return (f"runs the tower on {self.spatial_frames} of the clip's frames and on "
                f"{self.grid}x{self.grid}-frame grid framesets")

    def __post_init__(self) -> None:
        if self.spatial_frames < 1:
            raise ValueError(f"dualpath spatial_frames must be >= 1, got {self.spatial_frames}")
        if self.grid < 1:
            raise ValueError(f"dualpath grid must be >= 1, got {self.grid}")
        if not self.ratio > 0:
            raise ValueError(f"dualpath ratio must be > 0, got {self.ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dualpath dropout must be in [0, 1), got {self.dropout}")


# -- inputs of the two paths --------------------------------------------------------------------

def spatial_indices(num_frames: int, count: int) -> list[int]:
    """The frames the spatial path sees: ``count`` of ``num_frames``, evenly spaced from frame 0."""
    if count > num_frames:
        raise ValueError(f"dualpath: {count} spatial frames asked of a clip of {num_frames}")
    return [i * num_frames // count for i in range(count)]


def spatial_frames(video: torch.Tensor, count: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, count, H, W): every (T/count)-th frame, from frame 0."""
    return video[:, :, spatial_indices(video.shape[2], count)]


def grid_framesets(video: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T / grid², H, W): consecutive frames downscaled by 1/grid and tiled.

    Frame k of a group of grid² lands at tile row ``k // grid``, column ``k % grid``.
    """
    b, c, t, h, w = video.shape
    per_set = grid * grid
    if t % per_set:
        raise ValueError(f"dualpath: a clip of {t} frames does not split into framesets of {grid}x{grid}={per_set}")
    if h % grid or w % grid:
        raise ValueError(f"dualpath: frames of {h}x{w} px do not split into a {grid}x{grid} grid")
    th, tw = h // grid, w // grid
    frames = video.transpose(1, 2).reshape(b * t, c, h, w)
    if grid > 1:
        frames = F.interpolate(frames, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    tiles = frames.reshape(b, t // per_set, grid, grid, c, th, tw)          # (B, Tt, row, col, C, h, w)
    sets = tiles.permute(0, 4, 1, 2, 5, 3, 6)                               # (B, C, Tt, row, h, col, w)
    return sets.reshape(b, c, t // per_set, grid * th, grid * tw)


def tile_of_patch(patch_grid: tuple[int, int], grid: int) -> torch.Tensor:
    """For each patch (row-major), the index of the frameset tile its centre lies in, (rows * cols,)."""
    rows, cols = patch_grid
    tile_row = ((torch.arange(rows) * 2 + 1) * grid) // (2 * rows)   # floor((r + 1/2) / rows * grid)
    tile_col = ((torch.arange(cols) * 2 + 1) * grid) // (2 * cols)
    return (tile_row[:, None] * grid + tile_col[None, :]).reshape(-1)


# -- modules --------------------------------------------------------------------------------------

class DualPathAttention(nn.Module):
    """``attention``: the frozen MHSA on norm1(x), with the adapter each path puts around it.

    spatial: ``MHSA(xn) + spatial(xn)`` (parallel); temporal: ``MHSA(temporal_in(xn))`` (serial,
    before the attention); any other tag: ``MHSA(xn)``.
    """

    def __init__(self, view: BlockView, spatial: Bottleneck, temporal_in: Bottleneck) -> None:
        super().__init__()
        self.view = view   # a plain dataclass: the frozen attention stays the tower's
        self.spatial = spatial
        self.temporal_in = temporal_in

    def forward(self, xn: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        if ctx.tag == SPATIAL:
            return self.view.attn(xn) + self.spatial(xn)
        if ctx.tag == TEMPORAL:
            return self.view.attn(self.temporal_in(xn))
        return self.view.attn(xn)


class SerialAdapter(nn.Module):
    """``attn_branch`` / ``mlp_out``: the branch through the adapter on its path, untouched on the other."""

    def __init__(self, path: str, adapter: Bottleneck) -> None:
        super().__init__()
        self.path = path
        self.adapter = adapter

    def forward(self, h: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        return self.adapter(h) if ctx.tag == self.path else h

    def extra_repr(self) -> str:
        return f"path={self.path}"


class ParallelAdapter(nn.Module):
    """``mlp_parallel``: the adapter's output on norm2(x), added to the MLP's, on its path; 0 elsewhere."""

    def __init__(self, path: str, adapter: Bottleneck) -> None:
        super().__init__()
        self.path = path
        self.adapter = adapter

    def forward(self, xn: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        return self.adapter(xn) if ctx.tag == self.path else xn.new_zeros(())

    def extra_repr(self) -> str:
        return f"path={self.path}"


class FramesetEmbedding(nn.Module):
    """``before_pre_norm``, temporal path only: entry ``j * grid² + k`` of a (T, D) table, zero at init,
    added to every patch token of tile k in frameset j; prefix tokens unchanged."""

    def __init__(self, num_frames: int, grid: int, width: int) -> None:
        super().__init__()
        self.grid = grid
        self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, width))

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        if ctx.tag != TEMPORAL:
            return x
        per_set = self.grid * self.grid
        frames = self.temporal_embedding.shape[0]
        sets = ctx.num_frames
        if sets * per_set != frames:
            raise ValueError(f"dualpath: the temporal embedding was built for {frames} frames but got clips of "
                             f"{sets * per_set}; build the model with num_frames={sets * per_set}")
        n, length, width = x.shape
        prefix = ctx.num_prefix_tokens
        tiles = tile_of_patch(ctx.grid, self.grid).to(x.device)
        if length - prefix != tiles.numel():
            raise ValueError(f"dualpath: {length - prefix} patch tokens do not match the patch grid {ctx.grid}")
        index = torch.arange(sets, device=x.device)[:, None] * per_set + tiles[None, :]   # (Tt, P)
        embedding = self.temporal_embedding[index].to(x.dtype)                            # (Tt, P, D)
        x = x.reshape(n // sets, sets, length, width)
        x = torch.cat([x[:, :, :prefix], x[:, :, prefix:] + embedding], dim=2)
        return x.reshape(n, length, width)

    def extra_repr(self) -> str:
        return f"frames={self.temporal_embedding.shape[0]}, grid={self.grid}"


class DualPathEncoder(nn.Module):
    """The video encoder: both paths through the tower, each path's mean CLS, concatenated, Linear + GELU.

    Called as ``encoder(video, model)`` (``VideoModel.set_video_encoder``); ``out_dim`` = E, the width of
    one path's feature; the model's linear head completes the MLP head.
    """

    def __init__(self, feature_dim: int, spatial_frames: int, grid: int, project: bool) -> None:
        super().__init__()
        self.spatial_frames = spatial_frames
        self.grid = grid
        self.project = project
        self.out_dim = feature_dim
        self.fc = nn.Linear(2 * feature_dim, feature_dim)
        self.act = nn.GELU()

    def inputs(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The spatial frames (B, C, Ts, H, W) and the grid framesets (B, C, Tt, H, W) of a clip."""
        return spatial_frames(video, self.spatial_frames), grid_framesets(video, self.grid)

    def path_tokens(self, video: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor]:
        """Final CLS tokens of each path: spatial (B, Ts, D) and temporal (B, Tt, D), before the final norm."""
        backbone = model.backbone
        out = []
        for images, tag in zip(self.inputs(video), (SPATIAL, TEMPORAL)):
            b, c, t, h, w = images.shape
            tokens, _ = backbone.forward_tokens(images.transpose(1, 2).reshape(b * t, c, h, w),
                                                backbone.context(t, tag=tag))
            out.append(tokens[:, 0].reshape(b, t, -1))
        return out[0], out[1]

    def path_features(self, video: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor]:
        """Each path's feature, (B, E): the final norm (and projection) of each CLS, averaged over the path."""
        spatial, temporal = self.path_tokens(video, model)
        head = model.backbone.head
        return head(spatial, self.project).mean(dim=1), head(temporal, self.project).mean(dim=1)

    def forward(self, video: torch.Tensor, model) -> torch.Tensor:
        if model.project != self.project:
            raise ValueError(f"dualpath reads each path through its own `projection` option ({self.project}); "
                             f"the model's readout asks project={model.project}: pass projection= instead")
        spatial, temporal = self.path_features(video, model)
        return self.act(self.fc(torch.cat([temporal, spatial], dim=-1)))

    def extra_repr(self) -> str:
        return f"spatial_frames={self.spatial_frames}, grid={self.grid}, project={self.project}"


@register_method(
    "dualpath", DualPathConfig, family="adapter", claims=("readout", "frames", "attention"),
    paper="Park, Lee, Sohn. Dual-path Adaptation from Image to Video Transformers, CVPR 2023",
    help="spatial path (full-res frames, parallel adapters) + temporal path (grid framesets, serial adapters, "
         "temporal embedding) through one frozen tower; MLP head on both paths' mean CLS",
)
def apply_dualpath(model, config: DualPathConfig) -> None:
    backbone = model.backbone
    if "vpt" in backbone.after_embed:   # vpt checks this too when it comes second; the registry applies it first
        raise ValueError("shallow vpt changes the prefix tokens that dualpath's frameset embedding reads before "
                         "the pre-norm; use vpt_depth='deep' with dualpath")
    width = backbone.width
    frames, per_set = model.num_frames, config.grid * config.grid
    if frames % per_set or frames < config.spatial_frames:
        smallest = per_set * -(-config.spatial_frames // per_set)
        raise ValueError(f"dualpath: clips of {frames} frames need a multiple of grid*grid={per_set} frames and at "
                         f"least spatial_frames={config.spatial_frames}; e.g. num_frames={smallest}")

    def adapter(skip: bool) -> Bottleneck:
        # Linear -> GELU -> dropout -> Linear, PyTorch's default init of the down-projection, zero up-projection
        return Bottleneck(width, bottleneck_width(width, config.ratio, "dualpath"), dropout=config.dropout, skip=skip,
                          down_init="default")

    for view, slot in zip(backbone.views, backbone.slots):
        slot.add("attention", "dualpath", DualPathAttention(view, spatial=adapter(False),
                                                            temporal_in=adapter(config.serial_skip)))
        slot.add("attn_branch", "dualpath_temporal", SerialAdapter(TEMPORAL, adapter(config.serial_skip)))
        slot.add("mlp_parallel", "dualpath_spatial", ParallelAdapter(SPATIAL, adapter(False)))
        slot.add("mlp_out", "dualpath_temporal", SerialAdapter(TEMPORAL, adapter(config.serial_skip)))
    if config.temporal_embedding:
        backbone.before_pre_norm["dualpath"] = FramesetEmbedding(frames, config.grid, width)
    feature_dim = backbone.embed_dim if config.projection else backbone.width
    encoder = DualPathEncoder(feature_dim, config.spatial_frames, config.grid, config.projection)
    encoder.reference_frames = config.spatial_frames  # FLOPs reference: the image model on the spatial frames
    encoder.head_projection = config.projection   # both paths' CLS through backbone.head (methods/_readout.py)
    model.set_video_encoder(encoder)
    model.set_readout("embed-mean", project=config.projection)   # recorded with checkpoints; the head stays E wide
