"""Text-video retrieval metrics over a similarity matrix, and two optional test-time re-scorings.

Conventions (every function here):

- ``sim`` is ``(num_texts, num_videos)``: row i holds caption i's scores against every video. It may be a
  torch tensor or a numpy array; results are torch tensors / Python floats.
- ``video_of_text[i]`` is the video caption i describes. Default: caption i belongs to video i (the
  matrix must then be square). Videos no caption describes stay in the gallery of text->video search
  (distractors) but are not queries of video->text search.
- Ranks are 1-based; ties are broken pessimistically: the true item ranks after every other item with an
  equal (or higher) score, so a constant matrix ranks every query last, never first.
- R@K is the percentage of queries whose true item ranks K or better; MdR the median rank (the mean of the
  two middle ranks for an even count, as ``numpy.median``); MnR the mean rank.

Text->video (``"t2v"``): each caption is a query over the videos; the true video is ``video_of_text[i]``.

Video->text (``"v2t"``) when a video has several captions (MSVD, VATEX, MSR-VTT's 20 per video) follows
CLIP4Clip (Luo et al. 2021, ``tensor_video_to_text_sim`` in its ``metrics.py``): every video of the gallery
is represented, for the query video v, by its best caption, ``m[u, v] = max over captions c of u of
sim[c, v]``, and v's rank is that of its own best caption among those per-video bests, i.e. the smallest
rank of any of v's captions when each other video counts once. With one caption per video this is plain
ranking of the columns. ``v2t_multi="caption"`` selects instead the VSE / Collaborative Experts
convention (``v2t_metrics`` of CE's ``model/metric.py``, reused by the QB-Norm code): the smallest rank of
v's captions among *all* captions, i.e. 1 + the captions of other videos scoring at least v's best (a
video with three captions above v's best costs v three places there, one under CLIP4Clip's; CE averages
ties where this module is pessimistic). The two agree when every video has one caption.

The re-scorings (``dual_softmax``, ``qb_norm``) are never applied by ``retrieval_metrics``; report their
metrics separately (``dual_softmax_metrics``, or ``retrieval_metrics(qb_norm(...))``) beside the plain
ones, since both use more than the single query to score it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

RECALL_AT = (1, 5, 10)
_ROWS = 4096   # rows compared at once when ranking (bounds the boolean temporaries to _ROWS x num_columns)


def _as_tensor(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.detach()


def _as_scores(sim) -> torch.Tensor:
    sim = _as_tensor(sim)
    if sim.ndim != 2:
        raise ValueError(f"a similarity matrix is (num_texts, num_videos), got shape {tuple(sim.shape)}")
    if not sim.is_floating_point() or sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()   # exact for ordering; scatter/compare kernels cover float32/64 everywhere
    if torch.isnan(sim).any():
        raise ValueError("the similarity matrix has NaN scores")
    return sim


def _owners(video_of_text, num_texts: int, num_videos: int, device) -> torch.Tensor:
    if video_of_text is None:
        if num_texts != num_videos:
            raise ValueError(f"without video_of_text the similarity matrix must be square, got "
                             f"{num_texts} texts x {num_videos} videos")
        return torch.arange(num_texts, device=device)
    owners = _as_tensor(video_of_text).to(device=device, dtype=torch.long).reshape(-1)
    if len(owners) != num_texts:
        raise ValueError(f"video_of_text has {len(owners)} entries for {num_texts} texts")
    if len(owners) and (owners.min() < 0 or owners.max() >= num_videos):
        raise ValueError(f"video_of_text must index the {num_videos} videos (0 .. {num_videos - 1})")
    return owners


def rank_metrics(ranks: torch.Tensor) -> dict:
    """R@1/5/10 (percent), MdR and MnR of 1-based ranks."""
    ranks = ranks.double().cpu()
    result = {f"R@{k}": 100.0 * (ranks <= k).double().mean().item() for k in RECALL_AT}
    result["MdR"] = torch.quantile(ranks, 0.5).item()   # linear interpolation: mean of the middle two
    result["MnR"] = ranks.mean().item()
    return result


def text_to_video_ranks(sim, video_of_text=None) -> torch.Tensor:
    """The 1-based rank of each caption's video among all videos (pessimistic ties)."""
    sim = _as_scores(sim)
    owners = _owners(video_of_text, *sim.shape, sim.device)
    ranks = []
    for start in range(0, len(sim), _ROWS):
        rows = sim[start:start + _ROWS]
        true = rows.gather(1, owners[start:start + _ROWS, None])
        ranks.append((rows >= true).sum(dim=1))   # counts the true video itself once: 1 + others >= it
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=sim.device)


def video_to_text_ranks(sim, video_of_text=None, v2t_multi: str = "clip4clip") -> torch.Tensor:
    """The 1-based rank of each captioned video (in video order) as a query over the captions; see the
    module docstring for ``v2t_multi`` ("clip4clip" or "caption")."""
    sim = _as_scores(sim)
    num_texts, num_videos = sim.shape
    owners = _owners(video_of_text, num_texts, num_videos, sim.device)
    captioned = torch.zeros(num_videos, dtype=torch.bool, device=sim.device)
    captioned[owners] = True
    if v2t_multi == "clip4clip":
        # best[u, v]: the best score any caption of video u gives video v (-inf for an uncaptioned u)
        best = torch.full((num_videos, num_videos), float("-inf"), dtype=sim.dtype, device=sim.device)
        for start in range(0, num_texts, _ROWS):
            rows = sim[start:start + _ROWS]
            index = owners[start:start + _ROWS, None].expand_as(rows)
            best.scatter_reduce_(0, index, rows, reduce="amax", include_self=True)
        own = best.diagonal()
        ranks = ((best >= own[None, :]) & captioned[:, None]).sum(dim=0)
    elif v2t_multi == "caption":
        # own[v]: the best score of v's own captions; rank: 1 + captions of other videos scoring >= it
        own = torch.full((num_videos,), float("-inf"), dtype=sim.dtype, device=sim.device)
        own.scatter_reduce_(0, owners, sim.gather(1, owners[:, None]).squeeze(1), reduce="amax")
        ranks = torch.ones(num_videos, dtype=torch.long, device=sim.device)
        columns = torch.arange(num_videos, device=sim.device)
        for start in range(0, num_texts, _ROWS):
            rows = sim[start:start + _ROWS]
            other = owners[start:start + _ROWS, None] != columns[None, :]
            ranks += ((rows >= own[None, :]) & other).sum(dim=0)
    else:
        raise ValueError(f"v2t_multi is 'clip4clip' or 'caption', got {v2t_multi!r}")
    return ranks[captioned]


def retrieval_metrics(sim, video_of_text=None, v2t_multi: str = "clip4clip") -> dict:
    """``{"t2v": {"R@1", "R@5", "R@10", "MdR", "MnR"}, "v2t": {...}}`` of a ``(num_texts, num_videos)``
    similarity matrix; ``video_of_text[i]`` is caption i's video (default: i). R@K in percent; ranks
    1-based with pessimistic ties; multi-caption video->text by the CLIP4Clip convention (module docstring).
    """
    sim = _as_scores(sim)
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"an empty similarity matrix ({tuple(sim.shape)}) has no retrieval metrics")
    return {"t2v": rank_metrics(text_to_video_ranks(sim, video_of_text)),
            "v2t": rank_metrics(video_to_text_ranks(sim, video_of_text, v2t_multi))}


def dual_softmax(sim, temperature: float = 1.0, dim: int = 0) -> torch.Tensor:
    """Dual softmax (DSL) inference re-scoring of Cheng et al. 2021, "Improving Video-Text Retrieval by
    Multi-Stream Corpus Alignment and Dual Softmax Loss" (CAMoE, arXiv:2109.04290).

    Each similarity is multiplied by a prior, the softmax of the similarities over the *other* axis than
    the one ranked::

        dim=0 (for text->video, the default):  S'[i, j] = S[i, j] * exp(S[i, j] / T) / sum_i' exp(S[i', j] / T)
        dim=1 (for video->text):               S'[i, j] = S[i, j] * exp(S[i, j] / T) / sum_j' exp(S[i, j'] / T)

    With rows = texts, text->video ranks along a row (over videos), so its prior is the softmax over the
    texts (axis 0, down each video's column): a video that many captions score highly (a hub) has its
    scores shared out among those captions. Video->text ranks down a column, so it takes ``dim=1``.
    ``temperature`` divides the similarities inside the softmax only (CAMoE's implementation also multiplies
    the result by the number of rows, a constant that changes no rank; left out). On cosine similarities
    a small temperature (e.g. 0.01, CLIP's x100) is the usual choice; 1.0 gives a nearly flat prior.
    DSL uses the other test queries (it is transductive); report it beside, never instead of, the plain
    metrics.
    """
    sim = _as_tensor(sim)
    sim = sim.float() if not sim.is_floating_point() else sim
    return sim * torch.softmax(sim / temperature, dim=dim)


def dual_softmax_metrics(sim, video_of_text=None, temperature: float = 1.0, v2t_multi: str = "clip4clip") -> dict:
    """``retrieval_metrics`` after DSL: text->video from ``dual_softmax(sim, dim=0)``, video->text from
    ``dual_softmax(sim, dim=1)`` (each direction with the prior over the axis it does not rank)."""
    t2v = retrieval_metrics(dual_softmax(sim, temperature, dim=0), video_of_text, v2t_multi)["t2v"]
    v2t = retrieval_metrics(dual_softmax(sim, temperature, dim=1), video_of_text, v2t_multi)["v2t"]
    return {"t2v": t2v, "v2t": v2t}


def qb_norm(sim, bank_sim, k: int = 1, beta: float = 20.0) -> torch.Tensor:
    """Querybank normalisation with the dynamic inverted softmax (QB-Norm + DIS), Bogolin et al.,
    "Cross Modal Retrieval with Querybank Normalisation", CVPR 2022.

    ``sim`` is ``(num_queries, num_gallery)`` (rows are queries: texts over videos for text->video);
    ``bank_sim`` is ``(num_bank, num_gallery)``, the similarities of a querybank (e.g. the training captions)
    to the *same* gallery. Then:

    1. the activation set A is every gallery item that is among the top-``k`` of at least one bank query
       (the gallery's hubs as the bank sees them);
    2. a query whose top-1 gallery item (its argmax) is in A is re-scored by the inverted softmax over the
       bank, ``S'[q, g] = exp(beta * S[q, g]) / sum_b exp(beta * B[b, g])``;
    3. every other query keeps its similarities unchanged.

    Step 2 tests the query's *top-1* only, whatever ``k``: ``k`` sizes the bank's activation set, as in the
    paper's definition and its official code (``get_index_to_normalize`` looks at each query's first
    retrieved item). The ratio is computed as ``exp(beta * S - logsumexp(beta * B))``, equal to the formula
    but free of the overflow of ``exp(beta * B)`` itself, and the result is float64 (untouched rows exactly
    upcast): at beta = 20 the ratios of logit-scaled scores leave float32's range. Normalised and untouched
    rows are on different scales, which is harmless for ranking along rows (the query direction); for
    video->text, pass the transposed matrix with a bank of videos and transpose back. Report it beside the
    plain metrics.
    """
    sim = _as_scores(sim)
    bank = _as_scores(bank_sim).to(sim.device)
    if bank.shape[1] != sim.shape[1]:
        raise ValueError(f"the querybank scores {bank.shape[1]} gallery items, the queries {sim.shape[1]}")
    if len(bank) == 0:
        raise ValueError("the querybank is empty")
    k = max(1, min(int(k), sim.shape[1]))
    active = torch.zeros(sim.shape[1], dtype=torch.bool, device=sim.device)
    active[bank.topk(k, dim=1).indices.reshape(-1)] = True
    normalise = active[sim.argmax(dim=1)]
    log_norm = torch.logsumexp(beta * bank.double(), dim=0)
    out = sim.double()   # a copy (or a new tensor); the input is left as it was
    out = out.clone() if out.data_ptr() == sim.data_ptr() else out
    out[normalise] = torch.exp(beta * out[normalise] - log_norm[None, :])
    return out


def similarity_in_chunks(text_emb, video_emb, chunk: int = 4096, device=None) -> torch.Tensor:
    """``(num_texts, num_videos)`` cosine similarities of L2-normalised embeddings (float32), computed
    ``chunk`` texts at a time so large test sets never hold more than one chunk's intermediates;
    ``device``: where the result is gathered (default: the embeddings' device)."""
    text = text_emb if isinstance(text_emb, torch.Tensor) else torch.as_tensor(text_emb)
    video = video_emb if isinstance(video_emb, torch.Tensor) else torch.as_tensor(video_emb)
    video = F.normalize(video.float(), dim=-1)
    device = video.device if device is None else torch.device(device)
    rows = [(F.normalize(text[i:i + chunk].to(video.device).float(), dim=-1) @ video.t()).to(device)
            for i in range(0, len(text), chunk)]
    return torch.cat(rows) if rows else torch.zeros(0, len(video), device=device)
