"""Text-video retrieval: captioned videos, symmetric InfoNCE (embeddings gathered across processes with
their gradients), and R@1/5/10, median and mean rank in both directions.

A batch of the training set holds clips and one caption per clip (``CaptionDataset``); the caption of
clip i is its positive, every other clip of the global batch a negative. Evaluation embeds every video
once and every caption once, then scores one similarity matrix (a text-conditioned head such as
X-Pool scores each (caption, video) pair from the frame embeddings instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..data import collate_captions
from .base import gather_unique, model_device, reduce_sum, unwrap
from .contrastive import contrastive_loss, symmetric_infonce
from .retrieval_metrics import dual_softmax, qb_norm, retrieval_metrics, similarity_in_chunks

MAX_CAPTIONS_PER_VIDEO = 1000   # the gather key of a caption is video index x this + its ordinal


def _scorer(model):
    """The text-conditioned head of ``model`` (``aggregator.text_conditioned``), or None."""
    aggregator = getattr(unwrap(model), "aggregator", None)
    return aggregator if getattr(aggregator, "text_conditioned", False) else None


@dataclass
class RetrievalTask:
    """Video-text contrastive training (CLIP4Clip and the post-pretraining family) and R@K evaluation.

    ``max_words``: caption length in tokens (CLIP4Clip: 32; 64 for paragraphs), capped at the text
    tower's context. ``gather``: all-gather embeddings across processes so each loss sees the global
    batch (without it contrastive training weakens as processes are added).
    """

    max_words: int = 32
    gather: bool = True

    name = "retrieval"
    primary_metric = "t2v_R@1"

    def prepare(self, model, process_index: int = 0) -> None:
        """Refuse, with the reason and the fix, a model that cannot compare videos and texts."""
        net = unwrap(model)
        try:
            text = net.use_text()
        except Exception as error:
            raise ValueError(f"retrieval needs a CLIP backbone with a text tower ({error})") from error
        if net.embed_dim != text.embed_dim:
            methods = ",".join(name for name, _ in net.methods) or "this model"
            raise ValueError(
                f"{methods}: the video embedding is {net.embed_dim} wide (the tower's width or a decoder's output, "
                f"not projected) but CLIP's joint video-text space is {text.embed_dim} wide, so videos and captions "
                "cannot be compared. An in-backbone method serves retrieval under a retrieval head, e.g. "
                f"--method {methods},clip4clip; a method that owns the readout (evl, dist, side4video, "
                "uniformerv2) has no joint-space embedding to offer")

    def tokenize(self, model, captions: list[str], device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        ids, mask = unwrap(model).text.tokenize(list(captions))
        if ids.shape[1] > self.max_words:   # keep the end-of-text token where the tokenizer put one
            ids = ids[:, : self.max_words]
            mask = mask[:, : self.max_words] if mask is not None else None
        return ids.to(device), (mask.to(device) if mask is not None else None)

    def loss(self, model, batch: dict, unwrapped) -> torch.Tensor:
        device = batch["video"].device
        ids, mask = self.tokenize(unwrapped, batch["caption"], device)
        video, text, frames = model(batch["video"], input_ids=ids, attention_mask=mask)
        scale = unwrapped.text.logit_scale
        scorer = _scorer(unwrapped)
        if scorer is not None:   # text-conditioned pooling: the logits come from the head (local batch)
            logits = scorer.score(frames, text, logit_scale=scale)
            targets = torch.arange(len(logits), device=logits.device)
            return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        if not self.gather:
            return symmetric_infonce(text, video, scale)
        return contrastive_loss(text, video, scale, gather=True)

    def batch_size(self, batch: dict) -> int:
        return 0 if batch["video"] is None else int(batch["video"].shape[0])

    @staticmethod
    def collate(items):
        """Clips and their captions into a batch (``adaptvid.data.collate_captions``)."""
        return collate_captions(items)

    @torch.no_grad()
    def embed(self, model, loader, accelerator=None) -> dict:
        """Every readable video's embedding (and frame embeddings for a text-conditioned head) and every
        caption's embedding, gathered across processes, each once: videos by dataset index, captions
        by (video index, ordinal)."""
        net = unwrap(model)
        self.prepare(net)
        net.eval()
        device = model_device(net, accelerator)
        videos, frames, video_idx, texts, text_keys, lost = [], [], [], [], [], []
        skipped = 0
        scorer = _scorer(net)
        for batch in loader:
            skipped += batch["skipped"]
            lost.append(batch.get("skipped_indices", torch.zeros(0, dtype=torch.long)).to(device))
            if batch["video"] is None:
                continue
            clip = batch["video"].to(device)
            captions = [c for caps in batch["captions"] for c in caps]
            owners = [int(i) for i, caps in zip(batch["index"], batch["captions"]) for _ in caps]
            ordinals = [k for caps in batch["captions"] for k in range(len(caps))]
            ids, mask = self.tokenize(net, captions, device)
            video, text, frame = net.video_text_embeddings(clip, ids, mask)
            videos.append(video.float())
            if frame is not None:
                frames.append(frame.float())
            video_idx.append(batch["index"].to(device))
            texts.append(text.float())
            text_keys.append(torch.tensor([o * MAX_CAPTIONS_PER_VIDEO + k for o, k in zip(owners, ordinals)],
                                          dtype=torch.long, device=device))
        width = net.embed_dim
        cat = (lambda parts, *shape: torch.cat(parts) if parts else torch.zeros(0, *shape, device=device))
        v_idx, v_emb = gather_unique(accelerator, cat(video_idx).long(), cat(videos, width))
        t_key, t_emb = gather_unique(accelerator, cat(text_keys).long(), cat(texts, width))
        result = {"video_index": v_idx, "video": v_emb, "text_key": t_key, "text": t_emb}
        if scorer is not None:
            t = frames[0].shape[1] if frames else net.num_frames
            (_, result["frames"]) = gather_unique(accelerator, cat(video_idx).long(), cat(frames, t, width))
        unindexed = reduce_sum(accelerator, skipped - sum(len(x) for x in lost), device)
        (lost_all,) = gather_unique(accelerator, cat(lost).long())
        result["skipped"] = int(len(lost_all)) + unindexed
        return result

    def similarity(self, model, embedded: dict, chunk: int = 1024) -> torch.Tensor:
        """(num_captions, num_videos) similarities (cosine, or the text-conditioned head's scores)."""
        scorer = _scorer(model)
        if scorer is None:
            return similarity_in_chunks(embedded["text"], embedded["video"], chunk=chunk)
        rows = [scorer.score(embedded["frames"], embedded["text"][i:i + chunk])
                for i in range(0, len(embedded["text"]), chunk)]
        return torch.cat(rows) if rows else torch.zeros(0, len(embedded["video"]))

    def evaluate(self, model, loader, accelerator=None, dsl: bool = False,
                 bank: Optional[torch.Tensor] = None) -> dict:
        """R@K both ways: ``{"t2v", "v2t", "num_videos", "num_captions", "skipped"}``. Inference-time
        re-normalisations are reported separately, never instead: ``dsl`` adds ``"dsl"`` (dual softmax),
        ``bank`` (text embeddings of a query bank, e.g. the training captions) adds ``"qb_norm"``."""
        embedded = self.embed(model, loader, accelerator)
        position = {int(v): i for i, v in enumerate(embedded["video_index"])}
        owners = torch.tensor([position[int(k) // MAX_CAPTIONS_PER_VIDEO] for k in embedded["text_key"]],
                              dtype=torch.long)
        result = {"num_videos": len(position), "num_captions": len(owners), "skipped": embedded["skipped"]}
        if not len(owners):
            return {"t2v": {}, "v2t": {}, **result}
        sim = self.similarity(unwrap(model), embedded).cpu()
        result.update(retrieval_metrics(sim, owners))
        if dsl:
            result["dsl"] = retrieval_metrics(dual_softmax(sim), owners)
        if bank is not None:
            bank_sim = F.normalize(bank.float(), dim=-1) @ F.normalize(embedded["video"].float().cpu(), dim=-1).t()
            result["qb_norm"] = retrieval_metrics(qb_norm(sim, bank_sim), owners)
        return result

    def summary(self, metrics: dict) -> str:
        if not metrics.get("t2v"):
            return f"no readable video ({metrics['skipped']} skipped)"
        t2v, v2t = metrics["t2v"], metrics["v2t"]
        return (f"text->video R@1 {t2v['R@1']:.1f} R@5 {t2v['R@5']:.1f} R@10 {t2v['R@10']:.1f} MdR {t2v['MdR']:g}  "
                f"video->text R@1 {v2t['R@1']:.1f} R@5 {v2t['R@5']:.1f} R@10 {v2t['R@10']:.1f}  "
                f"({metrics['num_videos']} videos, {metrics['num_captions']} captions, {metrics['skipped']} skipped)")
