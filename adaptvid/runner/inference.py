"""Using a trained (or zero-shot) model: ``evaluate``, ``predict``, ``embed`` and ``merge_checkpoint`` —
what ``adaptvid eval``, ``predict``, ``embed`` and ``merge`` do, callable from Python.

Each takes a model (a ``VideoModel``) or a checkpoint folder; ``classes`` (names, or a file of
them) re-points the model at another class set first (zero-shot: ``adaptvid.set_classes``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..checkpoints import CONFIG_FILE, load_model, save_adapter
from ..data import VideoSample, parse_views, read_class_names
from ..model import VideoModel, build_model, count_parameters, merge, set_classes
from ..tasks import evaluate as evaluate_classification, view_scores
from ..text import read_templates
from ..train import OutputExistsError
from ..train.trainer import compiled
from .settings import NoUsefulWorkError
from .data import check_labels, eval_loader, load_samples, recorded_data
from .embed import describe, embed_videos, save_embeddings

ModelLike = Union[VideoModel, str, Path]
PERCENT_KEYS = ("top1", "top5", "mean_class")


def as_model(model: ModelLike, weights: Optional[str] = None, classes=None, templates=None,
             allow_other_weights: bool = False) -> VideoModel:
    """A VideoModel from a model or a checkpoint folder, re-pointed at ``classes`` when given (a list of
    names or a class-names file; ``templates``: a list or a templates file)."""
    if not isinstance(model, VideoModel):
        model = load_model(model, weights=weights, allow_other_weights=allow_other_weights)
    elif weights is not None:
        raise ValueError("weights= rebuilds a checkpoint on other backbone weights; pass a checkpoint folder, "
                         "not a model")
    if classes is not None:
        names = read_class_names(classes) if isinstance(classes, (str, Path)) else [str(c) for c in classes]
        if isinstance(templates, (str, Path)):
            templates = read_templates(templates)
        model = set_classes(model, names, templates)
    return model


def distributed_accelerator():
    """An Accelerator when this process is one of several (torchrun / accelerate launch), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator()


def is_main_process() -> bool:
    """False on every process but the first of a multi-process launch (so results print once)."""
    return int(os.environ.get("RANK", "0")) == 0


def evaluate(model: ModelLike, data, views: str = "1x1", *, data_root: Optional[str] = None,
             batch_size: int = 4, num_workers: int = 2, weights: Optional[str] = None, classes=None,
             templates=None, allow_outside_root: bool = False, allow_other_weights: bool = False,
             compile: bool = False) -> dict:
    """Top-1 / top-5 / mean-class accuracy (percent, 2 decimals) of ``model`` on ``data`` (a list file or
    a ``<class>/<video>`` tree): ``{"top1", "top5", "mean_class", "num_videos", "skipped", "views"}``,
    the object ``adaptvid eval --json`` prints. Raises if no video could be read, or a label has no class.
    ``compile``: score with ``torch.compile(model)`` (backend from ``ADAPTVID_COMPILE_BACKEND``, default
    inductor); the model passed in stays uncompiled."""
    parse_views(views)
    model = as_model(model, weights, classes, templates, allow_other_weights)
    samples, _ = load_samples(str(data), data_root, model.class_names if Path(data).is_dir() else None,
                              allow_outside_root)
    check_labels(samples, model.num_classes, str(data), "the model" if classes is None else "the class names")
    loader = eval_loader(model, recorded_data(model), samples, views, batch_size, num_workers)
    accelerator = distributed_accelerator()
    if accelerator is not None:   # each process scores its shard; the results are gathered
        model, loader = model.to(accelerator.device), accelerator.prepare(loader)
    result = evaluate_classification(compiled(model) if compile else model, loader, accelerator)
    if not result["num_videos"]:
        raise NoUsefulWorkError(f"{data}: none of its {len(samples)} videos could be read (first: "
                                f"{[s.path for s in samples[:3]]}); see the warnings above")
    result = {k: round(v, 2) if k in PERCENT_KEYS else v for k, v in result.items()}
    result["views"] = views
    return result


@torch.no_grad()
def predict(model: ModelLike, videos: Sequence[Union[str, Path]], k: int = 5, views: str = "1x1", *,
            weights: Optional[str] = None, classes=None, templates=None, allow_other_weights: bool = False) -> list[dict]:
    """The ``k`` most likely classes of each video: ``[{"video": path, "top": [{"class", "label", "score"}]}]``
    (scores: softmax probabilities, averaged over views). An unreadable video gets ``{"video", "error"}``."""
    parse_views(views)
    model = as_model(model, weights, classes, templates, allow_other_weights).eval()
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    paths = [str(Path(v).resolve()) for v in videos]
    present = [p for p in paths if Path(p).is_file()]   # a missing file or a folder is named here, not by the reader
    loader = eval_loader(model, recorded_data(model), [VideoSample(p, 0) for p in present], views,
                         batch_size=1, num_workers=0)
    read = dict(zip(present, loader))
    results = []
    for path in paths:
        batch = read.get(path)
        if batch is None or batch["video"] is None:
            error = ("unreadable (see the warning above)" if batch is not None else
                     "is a directory, not a video file" if Path(path).is_dir() else "no such file")
            results.append({"video": path, "error": error})
            continue
        scores = view_scores(model, batch["video"])[0]
        top = scores.topk(min(k, scores.shape[0]))
        results.append({"video": path, "top": [{"class": names[i], "label": int(i), "score": round(float(s), 6)}
                                               for s, i in zip(top.values, top.indices)]})
    return results


def embed(model: Union[ModelLike, None], data, output, views: str = "1x1", *, backbone: Optional[str] = None,
          frames: int = 8, weights: Optional[str] = None, data_root: Optional[str] = None, normalize: bool = False,
          batch_size: int = 4, num_workers: int = 2, overwrite: bool = False, allow_other_weights: bool = False) -> dict:
    """Video embeddings of ``data``'s videos to ``output`` (.safetensors + a .json sidecar): a checkpoint's
    (or model's) ``encode_video``, or with ``backbone=NAME`` (and ``model=None``) a plain backbone's mean
    frame embedding. Returns ``{"path", "num_videos", "embed_dim", "skipped"}``; raises if none was read."""
    parse_views(views)
    if (model is None) == (backbone is None):
        raise ValueError("pass exactly one of a model / checkpoint folder or backbone=NAME")
    checkpoint = None if model is None or isinstance(model, VideoModel) else str(model)
    if model is None:
        model = build_model(backbone, "frozen", num_frames=frames, weights=weights)
    else:
        model = as_model(model, weights, allow_other_weights=allow_other_weights)
    samples, _ = load_samples(str(data), data_root)
    loader = eval_loader(model, recorded_data(model), samples, views, batch_size, num_workers)
    result = embed_videos(model, loader, normalize=normalize)
    n = len(result["embeddings"])
    if not n:
        raise NoUsefulWorkError(f"{data}: none of its {len(samples)} videos could be read; nothing was written")
    path = save_embeddings(result, output, [s.path for s in samples], describe(model, views, normalize, checkpoint),
                           overwrite=overwrite)
    return {"path": str(path), "num_videos": n, "embed_dim": int(result["embeddings"].shape[1]),
            "skipped": result["skipped"]}


def merge_checkpoint(checkpoint, output, *, weights: Optional[str] = None, overwrite: bool = False,
                     allow_other_weights: bool = False) -> dict:
    """Fold a checkpoint's mergeable methods (ZeroI2V, LoRA) into its tower and save it to ``output``,
    keeping every setting it recorded (data sampling, training settings). Returns what was merged."""
    output = Path(output)
    if (output / CONFIG_FILE).exists() and not overwrite:
        raise OutputExistsError(f"{output} already holds a checkpoint; pass --overwrite to replace it")
    model = load_model(checkpoint, weights=weights, allow_other_weights=allow_other_weights).eval()
    before = count_parameters(model)[1]
    merge(model)
    save_adapter(model, output, class_names=model.class_names, extra=model.checkpoint_config.get("extra"))
    return {"merged": list(model.merged_methods), "parameters_before": before,
            "parameters_after": count_parameters(model)[1], "output": str(output)}
