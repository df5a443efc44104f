"""Training settings: one dataclass shared by the CLI, the recipes and the Python API."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata={"help": "training epochs"})
    batch_size: int = field(default=8, metadata={"help": "clips per process per step"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of new modules (adapters, head)"})
    backbone_lr: Optional[float] = field(default=None, metadata={
        "help": "learning rate of unfrozen backbone weights (default: lr / 10)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases, norms, embeddings)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up length, then cosine decay to 0"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    clip_grad: Optional[float] = field(default=1.0, metadata={"help": "gradient-norm clipping (None: off)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    mixup: float = field(default=0.0, metadata={"help": "Mixup Beta(a, a) alpha for training batches (0: off; X-CLIP 0.8)"})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix Beta(a, a) alpha, one box in every frame (0: off; X-CLIP 1.0)"})
    mix_switch_prob: float = field(default=0.5, metadata={"help": "with both on: probability of CutMix instead of Mixup"})
    mix_prob: float = field(default=1.0, metadata={"help": "probability that a batch is mixed at all"})
    precision: str = field(default="no", metadata={"help": "mixed precision: no, bf16 or fp16"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_workers: int = field(default=2, metadata={"help": "data-loader worker processes"})
    eval_every: int = field(default=1, metadata={"help": "evaluate every N epochs (and always at the end)"})
    log_every: int = field(default=10, metadata={"help": "write a train line to metrics.jsonl every N steps"})
    views: str = field(default="1x1", metadata={"help": "validation views CLIPSxCROPS"})
    shuffle: bool = field(default=True, metadata={
        "help": "reshuffle the training videos every epoch (false: list order, e.g. to reproduce a batch)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    max_skip_fraction: float = field(default=0.05, metadata={
        "help": "warn at the end when more than this fraction of the training videos was unreadable"})
    save_every_steps: int = field(default=0, metadata={
        "help": "also checkpoint every N optimiser steps inside an epoch, so --resume continues from that batch "
                "(0: at the end of each epoch only)"})
    max_nan_steps: int = field(default=0, metadata={
        "help": "steps with a non-finite loss are skipped (no optimiser step); the run stops with an error after "
                "more than N of them (0: at the first)"})
    grad_checkpoint: bool = field(default=False, metadata={
        "help": "recompute each transformer block in backward instead of keeping its activations (less memory, "
                "more time); full fine-tuning and methods inside the blocks"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model for the training and validation steps (the checkpoint holds the plain "
                "module's keys; backend from ADAPTVID_COMPILE_BACKEND, default inductor)"})
    token_drop: float = field(default=0.0, metadata={
        "help": "drop this fraction of each frame's patch tokens in training (FLIP / Harvest; CLS kept, eval "
                "unchanged); refused by methods that need the full patch grid"})

    def __post_init__(self) -> None:
        if self.precision is False:  # `precision: no` in a YAML file reads as the boolean false
            self.precision = "no"
        if self.precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"precision must be no, bf16 or fp16, got {self.precision!r}")
        for name in ("epochs", "batch_size", "grad_accum", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every_steps", "max_nan_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.token_drop, bool) or not 0 <= self.token_drop < 1:
            raise ValueError(f"token_drop must be a fraction in [0, 1), got {self.token_drop!r}")
        for name in ("lr", "backbone_lr"):
            value = getattr(self, name)
            if value is None and name == "backbone_lr":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}"
                                 + (" (to keep the backbone frozen, choose a method that does not train it)"
                                    if name == "backbone_lr" and value == 0 else ""))

    @property
    def resolved_backbone_lr(self) -> float:
        return self.backbone_lr if self.backbone_lr is not None else self.lr / 10

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
