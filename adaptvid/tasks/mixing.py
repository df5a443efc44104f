"""Mixup and CutMix on video batches, with soft targets (what X-CLIP, ViFi-CLIP and DiST train with).

Per batch, as timm's ``Mixup`` in batch mode: with ``mix_prob`` the batch is mixed with itself
reversed (clip i with clip B-1-i); when both are on, CutMix is chosen with ``switch_prob``, else
Mixup. Mixup blends whole clips with ``lam ~ Beta(a, a)``; CutMix pastes one box, the same box in
every frame (a box that moved between frames would be fake motion), and sets ``lam`` to the area
kept. Targets are the label-smoothed one-hot vectors mixed with the same ``lam``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Mixer:
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5
    mix_prob: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("mixup and cutmix alphas must be >= 0 (0 turns one off)")
        if not (0 <= self.switch_prob <= 1 and 0 <= self.mix_prob <= 1):
            raise ValueError("mix_switch_prob and mix_prob are probabilities in [0, 1]")
        self.rng = random.Random(self.seed)

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def targets(self, labels: torch.Tensor, num_classes: int, lam: float) -> torch.Tensor:
        off = self.label_smoothing / num_classes
        one_hot = torch.full((labels.shape[0], num_classes), off, device=labels.device)
        one_hot.scatter_(1, labels[:, None], 1.0 - self.label_smoothing + off)
        return lam * one_hot + (1.0 - lam) * one_hot.flip(0)

    def __call__(self, video: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T, H, W) clips and (B,) labels -> mixed clips and (B, classes) soft targets."""
        lam = 1.0
        if self.enabled and self.rng.random() < self.mix_prob:
            use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or self.rng.random() < self.switch_prob)
            if use_cutmix:
                video, lam = self._cutmix(video, self.rng.betavariate(self.cutmix_alpha, self.cutmix_alpha))
            else:
                lam = self.rng.betavariate(self.mixup_alpha, self.mixup_alpha)
                video = video * lam + video.flip(0) * (1.0 - lam)
        return video, self.targets(labels, num_classes, lam)

    def _cutmix(self, video: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        height, width = video.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        h, w = int(height * cut), int(width * cut)
        cy, cx = self.rng.randrange(height), self.rng.randrange(width)
        top, bottom = max(cy - h // 2, 0), min(cy + h // 2, height)
        left, right = max(cx - w // 2, 0), min(cx + w // 2, width)
        mixed = video.clone()
        mixed[..., top:bottom, left:right] = video.flip(0)[..., top:bottom, left:right]
        kept = 1.0 - (bottom - top) * (right - left) / (height * width)   # the area actually kept
        return mixed, kept


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
