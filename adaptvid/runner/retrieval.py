"""Retrieval runs: video-text contrastive training on a captions file (``task: retrieval``), retrieval
evaluation of a checkpoint or a frozen CLIP (the searchable index is ``runner/index.py``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..checkpoints import load_model
from ..data import CaptionDataset, collate_captions, read_captions
from ..model import VideoModel, build_model
from ..tasks.retrieval import RetrievalTask
from ..train import fit
from .data import decode_short_side, make_transform
from .settings import NoUsefulWorkError

logger = logging.getLogger("adaptvid")
DEFAULT_RETRIEVAL_FRAMES = 12   # CLIP4Clip samples 12 frames uniformly over the video


def caption_dataset(model, data: dict, path: str, train: bool, seed: int = 0) -> CaptionDataset:
    """A captions file (any format ``read_captions`` knows) as a dataset sized for ``model``."""
    videos = read_captions(path, data.get("root"), data.get("captions_format"))
    return CaptionDataset(videos, num_frames=model.num_frames, transform=make_transform(model, data, train, default_scale=(0.5, 1.0)),
                          train=train, backend=data.get("backend"), seed=seed,
                          decode_short_side=decode_short_side(data))


def caption_loader(model, data: dict, path: str, batch_size: int = 8, num_workers: int = 2) -> DataLoader:
    return DataLoader(caption_dataset(model, data, path, train=False), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=collate_captions)


def adapt_retrieval(resolved: dict, cfg, output: Path, *, resume: bool = False, overwrite: bool = False,
                    extend: bool = False, allow_other_weights: bool = False) -> dict:
    """Video-text contrastive training (``task: retrieval``): ``data.train`` / ``data.val`` are captions
    files; any method that yields a CLIP-space video embedding trains with the symmetric InfoNCE loss.
    Returns the final retrieval metrics (``t2v``, ``v2t``, ...), ``steps`` and ``output``."""
    data = resolved.get("data", {})
    model_settings = resolved.get("model", {})
    model = build_model(resolved["backbone"], resolved["method"], None, weights=resolved.get("weights"),
                        num_frames=int(model_settings.get("frames", DEFAULT_RETRIEVAL_FRAMES)),
                        **resolved.get("options", {}))
    task = RetrievalTask(max_words=int(data.get("max_words", 32)))
    task.prepare(model)   # a model that cannot compare videos and texts is refused before any data is read
    train_set = caption_dataset(model, data, data["train"], train=True, seed=cfg.seed)
    val_set = caption_dataset(model, data, data["val"], train=False) if data.get("val") else None
    logger.info("%s + %s (retrieval): %d training videos, %d captions; output %s", resolved["backbone"],
                resolved["method"], len(train_set), sum(len(v.captions) for v in train_set.videos), output)
    recorded = {"data": {k: v for k, v in data.items() if k not in ("train", "val")}, "task": "retrieval"}
    result = fit(model, train_set, val_set, cfg, output, resume=resume, overwrite=overwrite, extra_config=recorded,
                 task=task, extend=extend, allow_other_weights=allow_other_weights)
    result["output"] = str(output)
    return result


def evaluate_retrieval(model: Union[VideoModel, str, Path], captions, *, data_root: Optional[str] = None,
                       batch_size: int = 8, num_workers: int = 2, weights: Optional[str] = None, dsl: bool = False,
                       qb_norm_bank: Optional[str] = None, captions_format: Optional[str] = None,
                       allow_other_weights: bool = False) -> dict:
    """Text-video retrieval of a model or checkpoint on a captions file: the dict ``eval --task retrieval
    --json`` prints. ``qb_norm_bank``: a captions file whose captions form the QB-Norm query bank."""
    if not isinstance(model, VideoModel):
        model = load_model(model, weights=weights, allow_other_weights=allow_other_weights)
    data = {"root": data_root, "captions_format": captions_format}
    loader = caption_loader(model, data, str(captions), batch_size, num_workers)
    bank = None
    if qb_norm_bank:
        texts = [c for v in read_captions(qb_norm_bank, data_root, captions_format) for c in v.captions]
        bank = encode_texts(model, texts)
    result = RetrievalTask().evaluate(model, loader, dsl=dsl, bank=bank)
    if not result["num_videos"]:
        raise NoUsefulWorkError(f"{captions}: none of its videos could be read; see the warnings above")
    return result


def zero_shot_retrieval_model(backbone: str, num_frames: int = DEFAULT_RETRIEVAL_FRAMES,
                              weights: Optional[str] = None) -> VideoModel:
    """Frozen CLIP with CLIP4Clip's meanP (mean of normalised frame embeddings): the baseline."""
    return build_model(backbone, "clip4clip", num_frames=num_frames, weights=weights, sim_header="meanP",
                       train_visual=False, train_text=False).eval()


@torch.no_grad()
def encode_texts(model: VideoModel, texts: Sequence[str], batch: int = 256, max_words: int = 77,
                 normalize: bool = True) -> torch.Tensor:
    """Text embeddings (N, E) of ``texts`` through the model's text tower, L2-normalised unless ``normalize``
    is False."""
    task, out = RetrievalTask(max_words=max_words), []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch):
        ids, mask = task.tokenize(model, list(texts[i:i + batch]), device)
        embedded = model.use_text()(ids, mask).float()
        out.append((F.normalize(embedded, dim=-1) if normalize else embedded).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


__all__ = ["adapt_retrieval", "caption_dataset", "caption_loader", "encode_texts", "evaluate_retrieval",
           "zero_shot_retrieval_model"]
