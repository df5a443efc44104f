"""A searchable index of video embeddings (``adaptvid index`` / ``adaptvid search``).

An index is ``INDEX.safetensors`` (``embeddings`` (N, E), L2-normalised; ``frames`` (N, T, E) too when
the model's head is text-conditioned) and ``INDEX.json`` (the video paths in row order, the model
that embedded them, the videos that could not be read).

Building is resumable: videos are embedded in chunks, each chunk saved as a part in ``INDEX.partial/``
as soon as it is done; a build that stops (Ctrl-C, a crash, a full disk) picks up from its last part
when the same command is run again, and the parts become the index when every video is done.
``update=True`` adds the videos an index does not hold yet (a folder that grew).

Search ranks by cosine similarity: one matrix product, or FAISS's exact inner-product index when
``faiss`` is installed and the index is large. A text-conditioned head (X-Pool, CLIP4Clip's
tightTransf) scores each (text, video) pair through its own module, which costs a head evaluation per
pair; search therefore takes the best ``rerank`` candidates by cosine (mean-pooled video embedding)
and reorders those with the head.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..checkpoints import load_model
from ..data import VideoSample
from ..model import VideoModel
from .data import eval_loader, load_samples
from .embed import embed_videos, write_with_sidecar
from .retrieval import DEFAULT_RETRIEVAL_FRAMES, encode_texts, zero_shot_retrieval_model
from .settings import NoUsefulWorkError

logger = logging.getLogger("adaptvid")
FAISS_MIN_VIDEOS = 100_000   # below this a matrix product is as fast as building a FAISS index
DEFAULT_RERANK = 100         # candidates a text-conditioned head rescores per query
IDENTITY_KEYS = ("backbone", "weights", "methods", "checkpoint", "checkpoint_sha256", "frames")


def _text_conditioned_head(model: VideoModel):
    aggregator = getattr(model, "aggregator", None)
    return aggregator if getattr(aggregator, "text_conditioned", False) else None


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class Index:
    """Video embeddings and their paths, searchable by text: ``add``, ``search(model, texts, k)``,
    ``save`` / ``Index.load``. ``frames`` holds the frame embeddings a text-conditioned head reranks with."""

    def __init__(self, embeddings: Optional[torch.Tensor] = None, paths: Sequence[str] = (), info: Optional[dict] = None,
                 frames: Optional[torch.Tensor] = None):
        self.embeddings = F.normalize(embeddings.float(), dim=-1) if embeddings is not None and len(embeddings) \
            else torch.zeros(0, 0)
        self.frames = frames.float() if frames is not None and len(frames) else None
        self.paths = list(paths)
        self.info = dict(info or {})
        if len(self.paths) != len(self.embeddings):
            raise ValueError(f"{len(self.paths)} paths for {len(self.embeddings)} embeddings")
        if self.frames is not None and len(self.frames) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths for {len(self.frames)} frame embeddings")
        self._faiss_index = None

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, embeddings: torch.Tensor, paths: Sequence[str], frames: Optional[torch.Tensor] = None) -> None:
        if len(embeddings) != len(paths):
            raise ValueError(f"{len(paths)} paths for {len(embeddings)} embeddings")
        if (frames is None) != (self.frames is None) and len(self.paths):
            raise ValueError("frame embeddings must be given for all videos of an index or for none")
        new = F.normalize(embeddings.float(), dim=-1)
        self.embeddings = new if not len(self.paths) else torch.cat([self.embeddings, new])
        if frames is not None:
            self.frames = frames.float() if self.frames is None else torch.cat([self.frames, frames.float()])
        self.paths += list(paths)
        self._faiss_index = None

    def _top(self, queries: torch.Tensor, k: int, use_faiss: Optional[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices), each (Q, k): the ``k`` best videos per query by cosine."""
        queries = F.normalize(queries.float(), dim=-1)
        faiss = _faiss() if use_faiss is not False else None
        if use_faiss and faiss is None:
            raise ImportError("use_faiss=True needs FAISS: pip install 'adaptvid[faiss]' (faiss-cpu)")
        if faiss is not None and (use_faiss or len(self) >= FAISS_MIN_VIDEOS):
            if self._faiss_index is None:   # exact inner product: the same ranking as the matrix product
                self._faiss_index = faiss.IndexFlatIP(self.embeddings.shape[1])
                self._faiss_index.add(self.embeddings.contiguous().numpy())
            scores, indices = self._faiss_index.search(queries.contiguous().numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(indices).long()
        top = (queries @ self.embeddings.t()).topk(k, dim=1)
        return top.values, top.indices

    def search_embeddings(self, queries: torch.Tensor, k: int = 10, use_faiss: Optional[bool] = None) -> list[list[dict]]:
        """For each query embedding, the ``k`` best videos by cosine: ``[{"video", "score"}]`` best first.
        ``use_faiss``: None picks FAISS for a large index when it is installed; True requires it."""
        if not len(self):
            return [[] for _ in queries]
        scores, indices = self._top(queries, min(k, len(self)), use_faiss)
        return [[{"video": self.paths[int(i)], "score": round(float(s), 6)} for s, i in zip(vals, idx)]
                for vals, idx in zip(scores, indices)]

    def search(self, model: VideoModel, texts: Sequence[str], k: int = 10, rerank: int = DEFAULT_RERANK,
               use_faiss: Optional[bool] = None) -> list[list[dict]]:
        """For each text, the ``k`` best videos: ``[{"video": path, "score"}]`` best first. Scores are
        cosines, or the text-conditioned head's scores over its best ``rerank`` cosine candidates."""
        head = _text_conditioned_head(model)
        # a text-conditioned head takes the text tower's own output, as in training and evaluation
        queries = encode_texts(model, texts, normalize=head is None)
        if head is None or self.frames is None or not len(self):
            if head is not None and len(self):
                logger.warning("this index holds no frame embeddings: ranking by the mean-pooled embedding, "
                               "not by %s's text-conditioned scores (rebuild it with adaptvid index)",
                               type(head).__name__)
            return self.search_embeddings(queries, k, use_faiss)
        pool = min(max(rerank, k), len(self))
        _, candidates = self._top(queries, pool, use_faiss)
        device = next(model.parameters()).device
        results = []
        with torch.no_grad():
            for query, rows in zip(queries, candidates):
                scores = head.score(self.frames[rows].to(device), query[None].to(device))[0].float().cpu()
                order = scores.argsort(descending=True)[:k]
                results.append([{"video": self.paths[int(rows[i])], "score": round(float(scores[i]), 6)} for i in order])
        return results

    def save(self, path, overwrite: bool = False) -> Path:
        tensors = {"embeddings": self.embeddings}
        if self.frames is not None:
            tensors["frames"] = self.frames
        return write_with_sidecar(tensors, {**self.info, "videos": self.paths}, path, overwrite, what="index file")

    @classmethod
    def load(cls, path) -> "Index":
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if not path.is_file() or not sidecar.is_file():
            raise FileNotFoundError(f"{path}: no index here (expected {path.name} and {sidecar.name}, as written "
                                    "by adaptvid index)")
        info = json.loads(sidecar.read_text())
        tensors = load_file(str(path))
        return cls(tensors["embeddings"], info.pop("videos"), info, frames=tensors.get("frames"))


def _checkpoint_sha256(checkpoint: Optional[str]) -> Optional[str]:
    """The digest of a checkpoint's trained tensors: an index built from a retrained checkpoint of the
    same folder is not resumed or extended with the new model's embeddings."""
    if not checkpoint:
        return None
    tensors = Path(checkpoint) / "adapter.safetensors"
    if not tensors.is_file():
        return None
    digest = hashlib.sha256()
    with open(tensors, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PartialBuild:
    """``INDEX.partial/``: the identity of the model (``build.json``) and the parts done so far
    (``part-NNNNN.safetensors`` + ``.json``; a part counts once its tensors file exists, renamed last)."""

    def __init__(self, output: Path, identity: dict):
        self.folder = output.with_name(output.stem + ".partial")
        self.identity = identity

    def parts(self) -> list[tuple[dict, dict]]:
        """[(tensors, info)] of the complete parts, in order; a folder built by another model is refused."""
        if not self.folder.is_dir():
            return []
        recorded = json.loads((self.folder / "build.json").read_text()) if (self.folder / "build.json").is_file() else {}
        changed = [key for key in IDENTITY_KEYS if recorded.get(key) != self.identity.get(key)]
        if changed:
            raise ValueError(f"{self.folder}: an interrupted index build by another model ({', '.join(changed)} "
                             f"differ: {[recorded.get(k) for k in changed]} there, "
                             f"{[self.identity.get(k) for k in changed]} now); delete that folder or pass --overwrite")
        out = []
        for tensors_file in sorted(self.folder.glob("part-*.safetensors")):
            out.append((load_file(str(tensors_file)), json.loads(tensors_file.with_suffix(".json").read_text())))
        return out

    def write_part(self, number: int, tensors: dict, info: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        build = self.folder / "build.json"
        if not build.is_file():
            build.write_text(json.dumps(self.identity, indent=2) + "\n")
        stem = self.folder / f"part-{number:05d}"
        stem.with_suffix(".json").write_text(json.dumps(info) + "\n")
        tmp = stem.with_suffix(".safetensors.tmp")
        save_file({key: t.contiguous() for key, t in tensors.items()}, str(tmp))
        os.replace(tmp, stem.with_suffix(".safetensors"))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _index_samples(data, data_root: Optional[str]) -> list[VideoSample]:
    if Path(data).is_dir() and not any(p.is_dir() for p in Path(data).iterdir()):
        return [VideoSample(str(p), 0) for p in sorted(Path(data).iterdir()) if p.is_file()]
    return load_samples(str(data), data_root)[0]


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="index", unit="video", disable=not enabled)


def build_index(model: Union[VideoModel, str, Path, None], data, output, *, backbone: Optional[str] = None,
                frames: int = DEFAULT_RETRIEVAL_FRAMES, weights: Optional[str] = None, data_root: Optional[str] = None,
                batch_size: int = 4, num_workers: int = 2, overwrite: bool = False, update: bool = False,
                save_every: int = 256, progress: bool = True, allow_other_weights: bool = False) -> dict:
    """Embed the videos of a list file, class-folder tree or plain folder of videos into an index file
    (``adaptvid index``). Resumes an interrupted build of the same model; ``update`` embeds only the
    videos an existing index lacks; ``overwrite`` starts afresh. Parts of ``save_every`` videos are
    saved as they finish. Returns ``{"path", "num_videos", "added", "skipped"}``."""
    if (model is None) == (backbone is None):
        raise ValueError("pass exactly one of a model / checkpoint folder or backbone=NAME")
    if save_every < 1:
        raise ValueError(f"save_every must be at least 1 (got {save_every})")
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"{output}: the index file must end in .safetensors")
    checkpoint = None if model is None or isinstance(model, VideoModel) else str(model)
    if model is None:
        model = zero_shot_retrieval_model(backbone, frames, weights)
    elif not isinstance(model, VideoModel):
        model = load_model(model, weights=weights, allow_other_weights=allow_other_weights)
    identity = {"backbone": model.backbone.name, "weights": weights, "methods": [n for n, _ in model.methods],
                "checkpoint": checkpoint, "checkpoint_sha256": _checkpoint_sha256(checkpoint),
                "frames": model.num_frames}
    partial = PartialBuild(output, identity)
    base = None
    if overwrite:
        partial.remove()
    elif output.exists() or output.with_suffix(".json").exists():
        if not update:
            raise FileExistsError(f"{output} already exists; pass --update to add the videos it lacks, or "
                                  "--overwrite to rebuild it")
        base = Index.load(output)
        changed = [key for key in IDENTITY_KEYS if base.info.get(key) != identity.get(key)]
        if changed:
            raise ValueError(f"{output}: built by another model ({', '.join(changed)} differ); --update adds videos "
                             "embedded by the same model only: pass --overwrite to rebuild it")
    samples = _index_samples(data, data_root)
    parts = partial.parts()
    done = set(base.paths if base is not None else ())
    for _, info in parts:
        done.update(info["videos"])
        done.update(info["unreadable"])
    todo = [s for s in samples if s.path not in done]
    if parts:
        logger.info("%s: resuming an interrupted build: %d parts, %d of %d videos still to embed", partial.folder,
                    len(parts), len(todo), len(samples))
    want_frames = _text_conditioned_head(model) is not None
    bar = _progress(len(samples), len(samples) - len(todo), progress)
    for start in range(0, len(todo), save_every):
        chunk = todo[start:start + save_every]
        result = embed_videos(model, eval_loader(model, {}, chunk, "1x1", batch_size, num_workers),
                              with_frames=want_frames)
        read = [int(i) for i in result["indices"]]   # rows in chunk order; the rest could not be read
        tensors = {"embeddings": result["embeddings"]}
        if want_frames:
            tensors["frames"] = result["frames"]
        info = {"videos": [chunk[i].path for i in read],
                "unreadable": [s.path for i, s in enumerate(chunk) if i not in set(read)]}
        partial.write_part(len(parts), tensors, info)
        parts.append((tensors, info))
        bar.update(len(chunk))
    bar.close()
    index = base if base is not None else Index(info={**identity, "unreadable": []})
    for tensors, info in parts:
        if len(info["videos"]):
            index.add(tensors["embeddings"], info["videos"], tensors.get("frames"))
    unreadable = [p for _, info in parts for p in info["unreadable"]]
    if not len(index):
        partial.remove()
        raise NoUsefulWorkError(f"{data}: none of its {len(samples)} videos could be read; nothing was written")
    index.info.update(identity, unreadable=unreadable, skipped=len(unreadable))
    path = index.save(output, overwrite=True)
    partial.remove()
    added = sum(len(info["videos"]) for _, info in parts)
    return {"path": str(path), "num_videos": len(index), "added": added, "skipped": len(unreadable)}


def search_index(index_path, texts: Sequence[str], k: int = 10, weights: Optional[str] = None,
                 rerank: int = DEFAULT_RERANK, use_faiss: Optional[bool] = None) -> list[list[dict]]:
    """Rank an index's videos for each text (``adaptvid search``), with the model the index was built with."""
    index = Index.load(index_path)
    if index.info.get("checkpoint"):
        model = load_model(index.info["checkpoint"], weights=weights or index.info.get("weights"))
    else:
        model = zero_shot_retrieval_model(index.info["backbone"], index.info.get("frames", DEFAULT_RETRIEVAL_FRAMES),
                                          weights or index.info.get("weights"))
    return index.search(model.eval(), texts, k, rerank=rerank, use_faiss=use_faiss)


__all__ = ["DEFAULT_RERANK", "FAISS_MIN_VIDEOS", "Index", "build_index", "search_index"]
