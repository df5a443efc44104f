"""Video classification: integer labels, cross-entropy (optionally label-smoothed, Mixup/CutMix), and
top-1 / top-5 / mean-class accuracy over (multi-view) softmax scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..data import collate_videos
from .base import gather_unique, model_device, reduce_sum, unwrap
from .mixing import Mixer, soft_cross_entropy


def accuracy_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """top1 / top5 / mean class accuracy in percent, over (N, C) scores and (N,) labels."""
    if len(labels) == 0:
        return {"top1": 0.0, "top5": 0.0, "mean_class": 0.0, "num_videos": 0}
    k = min(5, scores.shape[1])
    topk = scores.topk(k, dim=1).indices
    top1 = (topk[:, 0] == labels).float()
    top5 = (topk == labels[:, None]).any(dim=1).float()
    per_class = [top1[labels == c].mean() for c in range(num_classes) if (labels == c).any()]
    return {
        "top1": 100.0 * top1.mean().item(),
        "top5": 100.0 * top5.mean().item(),
        "mean_class": 100.0 * torch.stack(per_class).mean().item(),
        "num_videos": int(len(labels)),
    }


def view_scores(model, video: torch.Tensor) -> torch.Tensor:
    """Softmax scores (B, C) of a (B, C, T, H, W) batch (or of cached backbone features), or averaged over
    the views of a (B, V, C, T, H, W) batch. Same as ``VideoModel.forward_views``, but callable on a
    DDP-wrapped model."""
    if video.ndim != 6:
        return model(video).float().softmax(dim=-1)
    b, v = video.shape[:2]
    return model(video.flatten(0, 1)).float().softmax(dim=-1).reshape(b, v, -1).mean(dim=1)


@torch.no_grad()
def predict_scores(model, loader, accelerator=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(indices, scores, labels, skipped) for every readable video of the loader's dataset.

    Scores are softmax probabilities averaged over views. Under several processes, results are
    gathered and de-duplicated by dataset index (the distributed sampler pads the last batch with
    repeats); they come back sorted by index.
    """
    model.eval()
    indices, scores, labels, lost = [], [], [], []
    skipped = 0
    device = model_device(model, accelerator)
    for batch in loader:
        skipped += batch["skipped"]
        lost.append(batch.get("skipped_indices", torch.zeros(0, dtype=torch.long)).to(device))
        if batch["video"] is None:
            continue
        indices.append(batch["index"].to(device))
        scores.append(view_scores(model, batch["video"].to(device)))
        labels.append(batch["label"].to(device))
    num_classes = unwrap(model).num_classes
    idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    sc = torch.cat(scores) if scores else torch.zeros(0, num_classes, device=device)
    lb = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    idx, sc, lb = gather_unique(accelerator, idx, sc, lb)
    lost = torch.cat(lost) if lost else torch.zeros(0, dtype=torch.long, device=device)
    # Unreadable videos known by index count once (the distributed sampler's padding repeats some);
    # items dropped without an index (a dataset returning None) are counted as they come.
    unindexed = reduce_sum(accelerator, skipped - len(lost), device)
    (lost,) = gather_unique(accelerator, lost)
    return idx.cpu(), sc.cpu(), lb.cpu(), int(len(lost)) + unindexed


def evaluate(model, loader, accelerator=None) -> dict:
    """top1 / top5 / mean-class accuracy (percent), num_videos and skipped count."""
    _, scores, labels, skipped = predict_scores(model, loader, accelerator)
    result = accuracy_metrics(scores, labels, unwrap(model).num_classes)
    result["skipped"] = skipped
    return result


@dataclass
class ClassificationTask:
    """Cross-entropy on class labels (a linear head or a text classifier), scored by accuracy.

    ``mixup`` / ``cutmix``: Beta(a, a) alphas (0: off), mixed with soft label-smoothed targets
    (``tasks/mixing.py``); each process draws its own mixes from ``seed + process index``.
    The model's own regularisers (``model.extra_losses``, e.g. Open-VCLIP's weight interpolation)
    are added to the loss on the unmixed clips and hard labels.
    """

    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_switch_prob: float = 0.5
    mix_prob: float = 1.0
    seed: int = 0

    name = "classification"
    primary_metric = "top1"

    def __post_init__(self) -> None:
        self.mixer: Optional[Mixer] = None

    @classmethod
    def from_train_config(cls, cfg) -> "ClassificationTask":
        return cls(cfg.label_smoothing, cfg.mixup, cfg.cutmix, cfg.mix_switch_prob, cfg.mix_prob, cfg.seed)

    def prepare(self, model, process_index: int = 0) -> None:
        if not model.num_classes:
            raise ValueError("classification needs a model with classes (num_classes or class_names)")
        if self.mixup or self.cutmix:
            if model.from_features:
                raise ValueError("mixup / cutmix mix video clips; they cannot be used with cached features "
                                 "(--cache-features)")
            self.mixer = Mixer(self.mixup, self.cutmix, self.mix_switch_prob, self.mix_prob, self.label_smoothing,
                               seed=self.seed + process_index)

    def loss(self, model, batch: dict, unwrapped) -> torch.Tensor:
        video, labels = batch["video"], batch["label"]
        if self.mixer is not None:   # soft targets, smoothing included
            mixed, targets = self.mixer(video, labels, unwrapped.num_classes)
            loss = soft_cross_entropy(model(mixed).float(), targets)
        else:
            loss = F.cross_entropy(model(video).float(), labels, label_smoothing=self.label_smoothing)
        for extra in unwrapped.extra_losses:
            loss = loss + extra(unwrapped, video, labels)
        return loss

    def batch_size(self, batch: dict) -> int:
        return len(batch["label"])

    @staticmethod
    def collate(items):
        """Clips and labels into a batch (``adaptvid.data.collate_videos``)."""
        return collate_videos(items)

    def evaluate(self, model, loader, accelerator=None) -> dict:
        return evaluate(model, loader, accelerator)

    def summary(self, metrics: dict) -> str:
        return (f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  mean class {metrics['mean_class']:.2f}%  "
                f"({metrics['num_videos']} videos, {metrics['skipped']} skipped)")
