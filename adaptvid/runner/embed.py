"""Video embeddings for other tasks: run a model (a checkpoint or a plain backbone) over a list of videos.

``embed_videos(model, loader)`` returns the embeddings in the order of the list, with the
indices of the videos that were read (unreadable ones are skipped and counted). With several
test views, a video's embedding is the mean of its views' embeddings. ``save_embeddings``
writes ``FILE.safetensors`` (``embeddings`` float32 (N, E), ``labels``, ``indices``) and
``FILE.json`` (the video paths in row order, the model, the views).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..train import OutputExistsError


@torch.no_grad()
def embed_videos(model, loader, normalize: bool = False, with_frames: bool = False) -> dict:
    """{"embeddings": (N, E), "labels": (N,), "indices": (N,), "skipped": int} over ``loader``'s batches;
    ``with_frames`` adds "frames" (N, T, E), the frame embeddings a text-conditioned retrieval head
    scores from (one test view: ``model.retrieval_video_embeddings``)."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list] = {"embeddings": [], "labels": [], "indices": [], **({"frames": []} if with_frames else {})}
    skipped = 0
    for batch in loader:
        skipped += batch["skipped"]
        if batch["video"] is None:
            continue
        video = batch["video"].to(device)
        if with_frames:
            if video.ndim == 6:
                raise ValueError("frame embeddings are taken from one test view; use views='1x1'")
            embedding, frames = model.retrieval_video_embeddings(video)
            parts["frames"].append(frames.float().cpu())
        elif video.ndim == 6:   # (B, V, C, T, H, W): the mean over a video's views
            b, v = video.shape[:2]
            embedding = model.encode_video(video.flatten(0, 1)).reshape(b, v, -1).mean(dim=1)
        else:
            embedding = model.encode_video(video)
        parts["embeddings"].append(embedding.float().cpu())
        parts["labels"].append(batch["label"])
        parts["indices"].append(batch["index"])
    result = {key: torch.cat(value) if value else torch.zeros(0) for key, value in parts.items()}
    if normalize and len(result["embeddings"]):
        result["embeddings"] = F.normalize(result["embeddings"], dim=-1)
    result["skipped"] = skipped
    return result


def write_with_sidecar(tensors: dict, info: dict, output, overwrite: bool = False, what: str = "embeddings file") -> Path:
    """``output`` (.safetensors: ``tensors``) and its ``.json`` sidecar (``info``); an existing file is kept
    unless ``overwrite``; the tensors are written to a temporary name and renamed last."""
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"{output}: the {what} must end in .safetensors")
    sidecar = output.with_suffix(".json")
    if not overwrite and (output.exists() or sidecar.exists()):
        raise OutputExistsError(f"{output} already exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".safetensors.tmp")
    save_file({key: t.contiguous() for key, t in tensors.items()}, str(tmp), metadata={"format": "pt"})
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, output)
    return output


def save_embeddings(result: dict, output, paths: list[str], description: dict, overwrite: bool = False) -> Path:
    """``output`` (.safetensors) and its ``.json`` sidecar; an existing file is kept unless ``overwrite``."""
    info = {**description, "videos": [paths[int(i)] for i in result["indices"]], "skipped": result["skipped"],
            "shape": list(result["embeddings"].shape)}
    return write_with_sidecar({key: result[key] for key in ("embeddings", "labels", "indices")}, info, output,
                              overwrite)


def describe(model, views: str, normalize: bool, checkpoint: Optional[str] = None) -> dict:
    return {"backbone": model.backbone.name, "methods": [name for name, _ in model.methods],
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None, "frames": model.num_frames,
            "views": views, "normalized": normalize, "embed_dim": model.embed_dim}
