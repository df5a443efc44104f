"""Clip-level spatial transforms: decoded uint8 frames in, normalised tensor out.

Every random choice is made once per clip and applied to all its frames:
cropping frames differently would add fake motion.  Geometry runs on uint8
(fast resize path, 4x less memory); we convert to float only at the end.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import RandAugment, color_jitter, grayscale, random_erase

# Normalisation constants in 0..1 units, as CLIP and timm publish them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) numpy -> uint8 (T, 3, H, W) tensor (channels before space)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (T, H, W, 3), got {tuple(frames.shape)}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


INTERPOLATIONS = ("bilinear", "bicubic")


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, "
                         f"got {interpolation!r}")
    return interpolation


def resize(video: torch.Tensor, height: int, width: int,
           interpolation: str = "bilinear") -> torch.Tensor:
    """Antialiased resize of (..., H, W), uint8 or float.

    `interpolation` is "bilinear" (default) or "bicubic" (what CLIP's
    preprocessing uses).  Plain torch rather than torchvision: same pixels
    (torchvision calls this kernel), without torchvision's ~2 s import.
    """
    mode = _check_interpolation(interpolation)
    lead, (h, w) = video.shape[:-2], video.shape[-2:]
    flat = video.reshape(-1, *video.shape[-3:]) if video.dim() >= 4 else video.reshape(1, -1, h, w)
    # A cropped view is strided; torch's fast uint8 kernel needs a dense
    # channels-last tensor and is ~30x slower otherwise (measured on CPU).
    flat = flat.contiguous(memory_format=torch.channels_last)
    if mode == "bicubic" and flat.dtype == torch.uint8 and flat.device.type != "cpu":
        # On CPU, torch 2.14 has a native antialiased bicubic uint8 kernel
        # (checked: it matches torchvision's uint8 resize exactly), so CPU
        # frames take the branch below.  Other devices are not known to have
        # one (torchvision also casts there), so go through float; bicubic
        # overshoots 0..255, hence clamp, then round back to uint8.
        out = F.interpolate(flat.float(), size=(height, width), mode=mode, antialias=True,
                            align_corners=False)
        out = out.clamp_(0, 255).round_().to(torch.uint8)
    else:
        out = F.interpolate(flat, size=(height, width), mode=mode, antialias=True,
                            align_corners=False)
    return out.reshape(*lead, height, width)


def short_side_resize(video: torch.Tensor, short_side: int,
                      interpolation: str = "bilinear") -> torch.Tensor:
    """Resize (..., H, W) so min(H, W) == short_side, keeping the aspect ratio."""
    _check_interpolation(interpolation)
    height, width = video.shape[-2:]
    if min(height, width) == short_side:
        return video
    if height <= width:
        return resize(video, short_side, max(short_side, round(width * short_side / height)),
                      interpolation)
    return resize(video, max(short_side, round(height * short_side / width)), short_side,
                  interpolation)


def center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """Central size x size window of (..., H, W); H and W must be >= size."""
    height, width = video.shape[-2:]
    _check_fits(height, width, size)
    top, left = (height - size) // 2, (width - size) // 2
    return video[..., top:top + size, left:left + size]


def _check_fits(height: int, width: int, size: int) -> None:
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {height}x{width} frames; "
                         f"resize the short side to at least {size} first")


def spatial_crops(video: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """Test-time crops of (..., H, W) after short-side resize.

    1: the centre crop.  3: left/centre/right crops along the longer side
    (top/centre/bottom for portrait frames), centred on the shorter side; with
    the short side resized to `size` they cover the whole frame.
    """
    if num_crops == 1:
        return [center_crop(video, size)]
    if num_crops != 3:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    height, width = video.shape[-2:]
    _check_fits(height, width, size)
    crops = []
    if height > width:
        left = (width - size) // 2
        for top in (0, (height - size) // 2, height - size):
            crops.append(video[..., top:top + size, left:left + size])
    else:
        top = (height - size) // 2
        for left in (0, (width - size) // 2, width - size):
            crops.append(video[..., top:top + size, left:left + size])
    return crops


def random_resized_box(height: int, width: int, scale: Sequence[float],
                       ratio: Sequence[float],
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop with area fraction in `scale` and
    aspect ratio w/h in `ratio` (log-uniform, so 3/4 and 4/3 are equally likely).

    Falls back to the largest central box with a ratio inside `ratio` when ten
    draws do not fit, as the usual RandomResizedCrop does.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    frame_ratio = width / height
    if frame_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif frame_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class VideoTransform:
    """uint8 numpy (T, H, W, 3) -> float32 tensor (C, T, size, size), normalised.

    Train: one random-resized crop shared by all frames, then an optional
    horizontal flip.  The flip is off by default because it swaps left and
    right, which changes the label of direction-dependent actions (e.g.
    "pushing something from left to right").  Optional, in this order and each
    drawn once per clip (see ``augment.py``): ``color_jitter`` (strength s,
    applied with probability ``color_jitter_prob``), ``grayscale`` (a
    probability), ``randaugment`` (a timm spec such as
    ``"rand-m7-n4-mstd0.5-inc1"``) and ``random_erasing`` (a probability).
    Test: resize the short side to `short_side` (default `size`), centre crop.
    `mean`/`std` are per-channel, in 0..1 units.  `interpolation` ("bilinear"
    or "bicubic", antialiased either way) is used by every resize: the
    training crop, the test-time short-side resize and ``multi_crop``; pass the
    backbone's ``Preprocess.interpolation`` to match its pretraining.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                 short_side: int | None = None, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3),
                 hflip: bool = False, randaugment: str | None = None, random_erasing: float = 0.0,
                 color_jitter: float = 0.0, color_jitter_prob: float = 0.8, grayscale: float = 0.0,
                 interpolation: str = "bilinear"):
        self.size = int(size)
        self.interpolation = _check_interpolation(interpolation)
        self.train = bool(train)
        self.short_side = int(short_side) if short_side is not None else self.size
        if self.short_side < self.size:
            raise ValueError(f"short_side ({self.short_side}) must be >= size ({self.size})")
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.hflip = bool(hflip)
        self.randaugment = RandAugment(randaugment) if randaugment else None
        self.random_erasing = float(random_erasing)
        self.color_jitter, self.color_jitter_prob = float(color_jitter), float(color_jitter_prob)
        self.grayscale = float(grayscale)
        for name in ("random_erasing", "color_jitter_prob", "grayscale"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ValueError(f"color_jitter is a strength in [0, 1] (e.g. 0.4), got {color_jitter}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # (x / 255 - mean) / std folded into one multiply and one subtract,
        # shaped (C, 1, 1, 1) to broadcast over (C, T, H, W).
        std64 = torch.tensor(self.std, dtype=torch.float64).view(-1, 1, 1, 1)
        self._scale = (1.0 / (255.0 * std64)).to(torch.float32)
        self._shift = (torch.tensor(self.mean, dtype=torch.float64).view(-1, 1, 1, 1)
                       / std64).to(torch.float32)

    def __repr__(self) -> str:
        extra = ""
        if self.randaugment is not None or self.random_erasing:
            extra = f", randaugment={self.randaugment!r}, random_erasing={self.random_erasing}"
        if self.color_jitter or self.grayscale:
            extra += (f", color_jitter={self.color_jitter} (p={self.color_jitter_prob}), "
                      f"grayscale={self.grayscale}")
        # The repr is part of the feature-cache fingerprint: the default stays
        # out of it so existing caches keep their key, bicubic gets a new one.
        interp = "" if self.interpolation == "bilinear" else f", interpolation={self.interpolation!r}"
        return (f"VideoTransform(size={self.size}, train={self.train}, "
                f"short_side={self.short_side}, hflip={self.hflip}{interp}{extra})")

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 (T, 3, H, W) -> normalised float32 (3, T, H, W)."""
        # contiguous_format: a permuted view would otherwise keep odd strides.
        video = video.permute(1, 0, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
        return video.mul_(self._scale).sub_(self._shift)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Transform one clip; `rng` drives the training randomness (None: fresh entropy)."""
        video = to_tensor(frames)
        if self.train:
            rng = rng if rng is not None else np.random.default_rng()
            top, left, h, w = random_resized_box(*video.shape[-2:], self.scale, self.ratio, rng)
            video = resize(video[..., top:top + h, left:left + w], self.size, self.size,
                           self.interpolation)
            if self.hflip and rng.random() < 0.5:
                video = video.flip(-1)
            if self.color_jitter and rng.random() < self.color_jitter_prob:
                video = color_jitter(video, self.color_jitter, rng)
            if self.grayscale and rng.random() < self.grayscale:
                video = grayscale(video)
            if self.randaugment is not None:
                video = self.randaugment(video, rng)
            video = self.normalize(video)
            if self.random_erasing:
                video = random_erase(video, self.random_erasing, rng)
            return video
        video = center_crop(short_side_resize(video, self.short_side, self.interpolation),
                            self.size)
        return self.normalize(video)

    def multi_crop(self, frames: np.ndarray, num_crops: int) -> list[torch.Tensor]:
        """Test-time views: `num_crops` (1 or 3) normalised (C, T, size, size) crops."""
        video = short_side_resize(to_tensor(frames), self.short_side, self.interpolation)
        return [self.normalize(crop) for crop in spatial_crops(video, self.size, num_crops)]
