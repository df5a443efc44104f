"""Singularity-style single-frame training (Lei, Berg, Bansal. Revealing Single Frame Bias for Video-and-Language
Learning. ACL 2023; official code jayleicn/singularity, e.g. ``configs/ret_ssv2_label.yaml``).

The finding: a model trained end to end on **one random frame per video** is a strong baseline on many
video benchmarks, so an evaluation should always report it. Here:

* training: each video of the batch contributes ``train_frames`` (default 1) frames drawn at random,
  without replacement, in temporal order (torch's RNG), so the tower runs on ``B * train_frames`` images;
* evaluation: every frame of the clip is encoded and the frame embeddings are averaged (late fusion).
  Singularity's default test-time ensemble is *early* fusion (the frames' tokens concatenated before its
  multimodal encoder); adaptvid has no multimodal encoder, so the mean is the cheap equivalent;
* the image tower is fine-tuned (``--singularity-finetune false`` freezes it: a 1-frame linear probe,
  then trainable from cached features); a linear head (default) or CLIP class-text classifier
  (``--singularity-classifier text``; with fine-tuning the text tower trains too, one random template per
  class per step).

It composes with methods that keep the per-frame tower (adapters, LoRA, temporal heads over frame
embeddings); those that run the tower themselves (video encoders) are refused. Differences: the paper's
backbone is BEiT-B/16 + BERT trained with contrastive/matching losses on image and video text; here the
backbone is any adaptvid tower and the loss is classification.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .registry import register_method

CLASSIFIERS = ("linear", "text")


@dataclass
class SingularityConfig:
    train_frames: int = field(default=1, metadata={
        "help": "random frames per video in training (Singularity: 1); evaluation uses every frame"})
    singularity_finetune: bool = field(default=True, metadata={
        "help": "fine-tune the image tower (false: frozen tower, a cacheable single-frame probe)"})
    singularity_classifier: str = field(default="linear", metadata={
        "help": "'linear' head or 'text' (CLIP class texts; needs a CLIP backbone and class names)"})

    def reframes(self) -> str:
        """What it does to the frames the tower sees (registry.check_clip_length)."""
        return f"trains on {self.train_frames} random frame(s) of each clip"

    def __post_init__(self) -> None:
        if self.train_frames < 1:
            raise ValueError(f"singularity train_frames must be >= 1, got {self.train_frames}")
        if self.singularity_classifier not in CLASSIFIERS:
            raise ValueError(f"singularity_classifier must be one of {CLASSIFIERS}, got {self.singularity_classifier!r}")


class RandomFrames(nn.Module):
    """``train_frame_selector``: keep ``k`` random frames (distinct, in order) of each video of a batch.

    Works on videos ``(B, C, T, H, W)`` and on cached features (``(B, T, D)``; with a decoder
    ``(B, layers, T, L, D)``).
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor, model) -> torch.Tensor:
        if model.video_encoder is not None:
            raise ValueError("singularity cannot subsample frames for a method that runs the tower itself "
                             "(a video encoder); drop one of the two methods")
        dim = 1 if (model.from_features and model.decoder is None) else 2
        b, t = x.shape[0], x.shape[dim]
        if t <= self.k:
            return x
        index = torch.rand(b, t).argsort(dim=1)[:, :self.k].sort(dim=1).values.to(x.device)   # (B, k)
        moved = x.movedim(dim, 1)
        picked = moved[torch.arange(b, device=x.device)[:, None], index]                      # (B, k, ...)
        return picked.movedim(1, dim)


@register_method(
    "singularity", SingularityConfig, family="hybrid", claims=("frames",), stage="training",
    paper="Lei, Berg, Bansal. Revealing Single Frame Bias for Video-and-Language Learning. ACL 2023",
    help="train on one random frame per video (fine-tuned tower), test on the mean of all frames: the "
         "single-frame baseline",
)
def apply_singularity(model, config: SingularityConfig) -> None:
    if model.video_encoder is not None:
        applied = ", ".join(name for name, _ in model.methods)
        raise ValueError(f"singularity cannot subsample the training frames of {applied}: its "
                         f"{type(model.video_encoder).__name__} runs the tower itself (a video encoder); "
                         "choose one of them")
    if model.train_frame_selector is not None:
        raise ValueError("another method already subsamples the training frames")
    from .atp import check_frames_to_select

    check_frames_to_select(model, config.train_frames)
    model.train_frame_selector = RandomFrames(config.train_frames)
    if config.singularity_classifier == "text":
        from ..text import DEFAULT_TEMPLATES, TextClassifier
        from ._text_heads import SampledTemplateClassifier

        from ._readout import record_readout

        text = model.use_text()
        model.set_readout("embed-mean", project=True)
        record_readout(model, "singularity", "embed-mean")   # the mean of the frame embeddings, at test time
        if not isinstance(model.head, TextClassifier):
            model.set_text_classifier(DEFAULT_TEMPLATES, classifier_cls=SampledTemplateClassifier)
        if config.singularity_finetune:
            text.requires_grad_(True)
    if config.singularity_finetune:
        model.backbone.tower.requires_grad_(True)
