"""Retrieval runs: video-text contrastive training on a captions file (``task: retrieval``), retrieval
evaluation of a checkpoint or a frozen CLIP, and a searchable index of video embeddings."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ..checkpoints import load_model
from ..data import CaptionDataset, VideoSample, collate_captions, read_captions
from ..model import VideoModel, build_model
from ..tasks.retrieval import RetrievalTask
from ..train import fit
from .data import eval_loader, load_samples, make_transform
from .embed import embed_videos, write_with_sidecar
from .settings import NoUsefulWorkError

logger = logging.getLogger("adaptvid")
DEFAULT_RETRIEVAL_FRAMES = 12   # CLIP4Clip samples 12 frames uniformly over the video


def caption_dataset(model, data: dict, path: str, train: bool, seed: int = 0) -> CaptionDataset:
    """A captions file (any format ``read_captions`` knows) as a dataset sized for ``model``."""
    videos = read_captions(path, data.get("root"), data.get("captions_format"))
    return CaptionDataset(videos, num_frames=model.num_frames, transform=make_transform(model, data, train, default_scale=(0.5, 1.0)),
                          train=train,
                          backend=data.get("backend"), seed=seed)


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
def encode_texts(model: VideoModel, texts: Sequence[str], batch: int = 256, max_words: int = 77) -> torch.Tensor:
    """L2-normalised text embeddings (N, E) of ``texts`` through the model's text tower."""
    task, out = RetrievalTask(max_words=max_words), []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch):
        ids, mask = task.tokenize(model, list(texts[i:i + batch]), device)
        out.append(F.normalize(model.use_text()(ids, mask).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


class Index:
    """Video embeddings and their paths, searchable by text: ``add``, ``search(texts, k)``, ``save`` /
    ``Index.load``. Scores are cosine similarities (one matrix product); text-conditioned heads
    (X-Pool) need the frame embeddings and are not served by this index (a full rescoring per query)."""

    def __init__(self, embeddings: Optional[torch.Tensor] = None, paths: Sequence[str] = (), info: Optional[dict] = None):
        self.embeddings = F.normalize(embeddings.float(), dim=-1) if embeddings is not None and len(embeddings) \
            else torch.zeros(0, 0)
        self.paths = list(paths)
        self.info = dict(info or {})
        if len(self.paths) != len(self.embeddings):
            raise ValueError(f"{len(self.paths)} paths for {len(self.embeddings)} embeddings")

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, embeddings: torch.Tensor, paths: Sequence[str]) -> None:
        if len(embeddings) != len(paths):
            raise ValueError(f"{len(paths)} paths for {len(embeddings)} embeddings")
        new = F.normalize(embeddings.float(), dim=-1)
        self.embeddings = new if not len(self.paths) else torch.cat([self.embeddings, new])
        self.paths += list(paths)

    def search_embeddings(self, queries: torch.Tensor, k: int = 10) -> list[list[dict]]:
        scores = F.normalize(queries.float(), dim=-1) @ self.embeddings.t()
        top = scores.topk(min(k, len(self.paths)), dim=1)
        return [[{"video": self.paths[int(i)], "score": round(float(s), 6)} for s, i in zip(vals, idx)]
                for vals, idx in zip(top.values, top.indices)]

    def search(self, model: VideoModel, texts: Sequence[str], k: int = 10) -> list[list[dict]]:
        """For each text, the ``k`` best videos: ``[{"video": path, "score": cosine}]`` best first."""
        return self.search_embeddings(encode_texts(model, texts), k)

    def save(self, path, overwrite: bool = False) -> Path:
        return write_with_sidecar({"embeddings": self.embeddings}, {**self.info, "videos": self.paths}, path,
                                  overwrite, what="index file")

    @classmethod
    def load(cls, path) -> "Index":
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if not path.is_file() or not sidecar.is_file():
            raise FileNotFoundError(f"{path}: no index here (expected {path.name} and {sidecar.name}, as written "
                                    "by adaptvid index)")
        info = json.loads(sidecar.read_text())
        return cls(load_file(str(path))["embeddings"], info.pop("videos"), info)


def build_index(model: Union[VideoModel, str, Path, None], data, output, *, backbone: Optional[str] = None,
                frames: int = DEFAULT_RETRIEVAL_FRAMES, weights: Optional[str] = None, data_root: Optional[str] = None,
                batch_size: int = 4, num_workers: int = 2, overwrite: bool = False,
                allow_other_weights: bool = False) -> dict:
    """Embed the videos of a list file, class-folder tree or plain folder of videos into an index file
    (``adaptvid index``). Returns ``{"path", "num_videos", "skipped"}``."""
    if (model is None) == (backbone is None):
        raise ValueError("pass exactly one of a model / checkpoint folder or backbone=NAME")
    checkpoint = None if model is None or isinstance(model, VideoModel) else str(model)
    if model is None:
        model = zero_shot_retrieval_model(backbone, frames, weights)
    elif not isinstance(model, VideoModel):
        model = load_model(model, weights=weights, allow_other_weights=allow_other_weights)
    if Path(data).is_dir() and not any(p.is_dir() for p in Path(data).iterdir()):
        samples = [VideoSample(str(p), 0) for p in sorted(Path(data).iterdir()) if p.is_file()]
    else:
        samples, _ = load_samples(str(data), data_root)
    result = embed_videos(model, eval_loader(model, {}, samples, "1x1", batch_size, num_workers))
    if not len(result["embeddings"]):
        raise NoUsefulWorkError(f"{data}: none of its {len(samples)} videos could be read; nothing was written")
    paths = [samples[int(i)].path for i in result["indices"]]
    info = {"backbone": model.backbone.name, "methods": [n for n, _ in model.methods], "checkpoint": checkpoint,
            "frames": model.num_frames, "skipped": result["skipped"]}
    path = Index(result["embeddings"], paths, info).save(output, overwrite=overwrite)
    return {"path": str(path), "num_videos": len(paths), "skipped": result["skipped"]}


def search_index(index_path, texts: Sequence[str], k: int = 10, weights: Optional[str] = None) -> list[list[dict]]:
    """Rank an index's videos for each text (``adaptvid search``), with the model the index was built with."""
    index = Index.load(index_path)
    if index.info.get("checkpoint"):
        model = load_model(index.info["checkpoint"], weights=weights)
    else:
        model = zero_shot_retrieval_model(index.info["backbone"], index.info.get("frames", DEFAULT_RETRIEVAL_FRAMES),
                                          weights)
    return index.search(model.eval(), texts, k)


__all__ = ["Index", "adapt_retrieval", "build_index", "caption_dataset", "caption_loader", "encode_texts",
           "evaluate_retrieval", "search_index", "zero_shot_retrieval_model"]
