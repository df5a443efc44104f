"""Clip-consistent RandAugment and random erasing (the SSv2 / Kinetics recipes of many papers).

RandAugment (Cubuk et al. 2020) as timm specifies it, since that is what the video papers
run: ``rand-m7-n4-mstd0.5-inc1`` = 4 operations per clip drawn with replacement from 15,
each applied with probability 0.5 at magnitude 7 (of 10) perturbed by N(0, 0.5) noise,
using the "increasing" operation set (a larger magnitude is always a stronger change).
Every choice is made once per clip and applied to all its frames alike, as the official
video loaders do: a different operation per frame would add fake motion. Levels follow
timm's definitions; the pixel operations are torchvision's (geometry turns about the
centre with bilinear sampling, filled with the ImageNet mean colour).

Random erasing (Zhong et al. 2020) replaces one box of the normalised clip by N(0, 1)
noise. The video loaders that use it (VideoMAE's, reused by AIM and ZeroI2V) erase a
different box in every frame; adaptvid erases the same box with the same noise in every
frame (the clip-consistency rule above) — a deliberate departure.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

LEVEL_MAX = 10.0
FILL = (124, 116, 104)   # the ImageNet mean colour, timm's fill for geometric operations


@dataclass(frozen=True)
class RandAugmentSpec:
    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0
    increasing: bool = False

    @classmethod
    def parse(cls, text: str) -> "RandAugmentSpec":
        """timm's spec string: ``rand-m7-n4-mstd0.5-inc1`` (the ``rand-`` prefix is optional)."""
        spec = str(text).strip()
        parts = spec.split("-")
        if parts and parts[0] == "rand":
            parts = parts[1:]
        values = {}
        for part in parts:
            match = re.fullmatch(r"(mstd|inc|m|n)([0-9.]+)", part)
            if not match:
                raise ValueError(f"randaugment {spec!r}: cannot read {part!r}; write e.g. rand-m7-n4-mstd0.5-inc1 "
                                 "(m: magnitude 0-10, n: operations per clip, mstd: magnitude noise, inc1: increasing set)")
            values[match.group(1)] = float(match.group(2))
        result = cls(num_ops=int(values.get("n", cls.num_ops)), magnitude=values.get("m", cls.magnitude),
                     magnitude_std=values.get("mstd", cls.magnitude_std), increasing=bool(values.get("inc", 0)))
        if result.num_ops < 1 or not 0 <= result.magnitude <= LEVEL_MAX or result.magnitude_std < 0:
            raise ValueError(f"randaugment {spec!r}: needs n >= 1, 0 <= m <= 10 and mstd >= 0")
        return result


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _enhance_factor(level: float, increasing: bool, rng: np.random.Generator) -> float:
    if increasing:   # 1 +- 0.9 at full strength: always a change of the given size
        return 1.0 + _signed(level / LEVEL_MAX * 0.9, rng)
    return level / LEVEL_MAX * 1.8 + 0.1


def _solarize_add(video: torch.Tensor, amount: int, threshold: int = 128) -> torch.Tensor:
    added = (video.to(torch.int16) + amount).clamp_(0, 255).to(torch.uint8)
    return torch.where(video < threshold, added, video)


def _apply(name: str, video: torch.Tensor, level: float, increasing: bool, rng: np.random.Generator) -> torch.Tensor:
    """One operation on a uint8 (T, 3, H, W) clip at ``level`` in [0, 10]."""
    import torchvision.transforms.v2.functional as TF

    height, width = video.shape[-2:]
    geometry = dict(interpolation=TF.InterpolationMode.BILINEAR, fill=list(FILL))
    if name == "AutoContrast":
        return TF.autocontrast(video)
    if name == "Equalize":
        return TF.equalize(video)
    if name == "Invert":
        return TF.invert(video)
    if name == "Rotate":
        return TF.rotate(video, _signed(level / LEVEL_MAX * 30.0, rng), **geometry)
    if name in ("ShearX", "ShearY"):
        angle = math.degrees(math.atan(_signed(level / LEVEL_MAX * 0.3, rng)))
        shear = [angle, 0.0] if name == "ShearX" else [0.0, angle]
        return TF.affine(video, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, **geometry)
    if name in ("TranslateXRel", "TranslateYRel"):
        fraction = _signed(level / LEVEL_MAX * 0.45, rng)
        shift = [round(fraction * width), 0] if name == "TranslateXRel" else [0, round(fraction * height)]
        return TF.affine(video, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], **geometry)
    if name == "Posterize":
        bits = 4 - int(level / LEVEL_MAX * 4) if increasing else int(level / LEVEL_MAX * 4) + 4
        return video if bits >= 8 else TF.posterize(video, max(bits, 0))
    if name == "Solarize":
        threshold = 256 - int(level / LEVEL_MAX * 256) if increasing else int(level / LEVEL_MAX * 256)
        return video if threshold >= 256 else TF.solarize(video, threshold)
    if name == "SolarizeAdd":
        return _solarize_add(video, int(level / LEVEL_MAX * 110))
    factor = _enhance_factor(level, increasing, rng)
    adjust = {"Color": TF.adjust_saturation, "Contrast": TF.adjust_contrast,
              "Brightness": TF.adjust_brightness, "Sharpness": TF.adjust_sharpness}[name]
    return adjust(video, factor)


OPERATIONS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
              "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


class RandAugment:
    """``RandAugment(spec)(video, rng)``: uint8 ``(T, 3, H, W)`` in and out, one draw per clip."""

    def __init__(self, spec: str | RandAugmentSpec, probability: float = 0.5) -> None:
        self.spec = spec if isinstance(spec, RandAugmentSpec) else RandAugmentSpec.parse(spec)
        self.probability = probability

    def __repr__(self) -> str:
        s = self.spec
        return f"RandAugment(n={s.num_ops}, m={s.magnitude}, mstd={s.magnitude_std}, increasing={s.increasing})"

    def __call__(self, video: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if video.dtype != torch.uint8 or video.dim() != 4 or video.shape[1] != 3:
            raise ValueError(f"RandAugment takes a uint8 clip (T, 3, H, W), got {video.dtype} {tuple(video.shape)}")
        spec = self.spec
        for index in rng.integers(0, len(OPERATIONS), size=spec.num_ops):  # with replacement, as timm
            if rng.random() >= self.probability:
                continue
            level = spec.magnitude
            if spec.magnitude_std > 0:
                level = float(np.clip(rng.normal(level, spec.magnitude_std), 0.0, LEVEL_MAX))
            video = _apply(OPERATIONS[int(index)], video, level, spec.increasing, rng)
        return video


def random_erase(video: torch.Tensor, probability: float, rng: np.random.Generator,
                 area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3), attempts: int = 10) -> torch.Tensor:
    """With ``probability``, fill one box of a normalised ``(C, T, H, W)`` clip with N(0, 1) noise,
    the same box and noise in every frame. In place; returns the clip."""
    if probability <= 0 or rng.random() >= probability:
        return video
    channels, _, height, width = video.shape
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        target = height * width * rng.uniform(*area)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        h, w = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < h < height and 0 < w < width:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            noise = torch.from_numpy(rng.standard_normal((channels, 1, h, w)).astype(np.float32))
            video[:, :, top:top + h, left:left + w] = noise.to(video.dtype)
            return video
    return video


def color_jitter(video: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s] and a hue shift in [-s/4, s/4]
    (X-CLIP's 0.4 / 0.1), applied in a random order to the whole uint8 (T, 3, H, W) clip."""
    import torchvision.transforms.v2.functional as TF

    operations = [
        lambda v: TF.adjust_brightness(v, rng.uniform(max(0.0, 1 - strength), 1 + strength)),
        lambda v: TF.adjust_contrast(v, rng.uniform(max(0.0, 1 - strength), 1 + strength)),
        lambda v: TF.adjust_saturation(v, rng.uniform(max(0.0, 1 - strength), 1 + strength)),
        lambda v: TF.adjust_hue(v, rng.uniform(-strength / 4, strength / 4)),
    ]
    for index in rng.permutation(len(operations)):
        video = operations[int(index)](video)
    return video


def grayscale(video: torch.Tensor) -> torch.Tensor:
    """The clip in grey, still three channels."""
    import torchvision.transforms.v2.functional as TF

    return TF.rgb_to_grayscale(video, num_output_channels=3)
