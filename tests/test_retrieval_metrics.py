"""Retrieval metrics, DSL and QB-Norm on hand-made matrices whose answers are worked out by hand."""
import math

import numpy as np
import pytest
import torch

from adaptvid.tasks.retrieval_metrics import (dual_softmax, dual_softmax_metrics, qb_norm, retrieval_metrics,
                                              similarity_in_chunks, text_to_video_ranks, video_to_text_ranks)

PERFECT = {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "MdR": 1.0, "MnR": 1.0}


def _approx(metrics: dict, expected: dict):
    assert set(metrics) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def _with_ranks(ranks: list[int], size: int) -> torch.Tensor:
    """A (len(ranks), size) matrix whose row i scores its true item (column i) at rank ranks[i]: the other
    columns get distinct scores, ranks[i] - 1 of them above the true one."""
    sim = torch.zeros(len(ranks), size)
    for i, r in enumerate(ranks):
        others = [j for j in range(size) if j != i]
        scores = torch.arange(size, 0, -1, dtype=torch.float)   # size .. 1, distinct, descending
        order = others[: r - 1] + [i] + others[r - 1:]
        sim[i, order] = scores
    return sim


def test_perfect_diagonal():
    sim = torch.eye(6) + 0.01 * torch.rand(6, 6)
    result = retrieval_metrics(sim)
    _approx(result["t2v"], PERFECT)
    _approx(result["v2t"], PERFECT)


def test_numpy_input_matches_torch():
    sim = torch.rand(7, 7)
    assert retrieval_metrics(sim.numpy()) == retrieval_metrics(sim)
    assert retrieval_metrics(sim.double()) == retrieval_metrics(sim)


def test_shuffled_videos_through_video_of_text():
    # caption i describes video perm[i]; the scores put each caption's video first
    perm = torch.tensor([3, 0, 4, 1, 2])
    sim = torch.zeros(5, 5)
    sim[torch.arange(5), perm] = 1.0
    result = retrieval_metrics(sim, video_of_text=perm)
    _approx(result["t2v"], PERFECT)
    _approx(result["v2t"], PERFECT)
    # against the default diagonal owners the true scores are 0, tied with 3 others and below 1:
    # pessimistic rank 5 for every query
    _approx(retrieval_metrics(sim)["t2v"], {"R@1": 0.0, "R@5": 100.0, "MdR": 5.0, "MnR": 5.0})


def test_known_ranks_give_known_metrics_both_directions():
    ranks = [1, 1, 2, 3, 5, 6, 10, 11, 12, 1, 4, 7]
    sim = _with_ranks(ranks, 12)
    assert text_to_video_ranks(sim).tolist() == ranks
    # 3 ranks are 1, 7 are <= 5, 10 are <= 10; sorted 1 1 1 2 3 4 5 6 7 10 11 12: median (4 + 5) / 2;
    # mean 63 / 12
    expected = {"R@1": 100 * 3 / 12, "R@5": 100 * 7 / 12, "R@10": 100 * 10 / 12, "MdR": 4.5, "MnR": 63 / 12}
    _approx(retrieval_metrics(sim)["t2v"], expected)
    # the transpose puts the same ranks on video->text
    _approx(retrieval_metrics(sim.t())["v2t"], expected)
    # an odd count: the middle rank itself
    _approx(retrieval_metrics(_with_ranks([1, 3, 2], 3))["t2v"], {"MdR": 2.0, "MnR": 2.0})


def test_ties_are_broken_pessimistically():
    _approx(retrieval_metrics(torch.zeros(4, 4))["t2v"], {"R@1": 0.0, "MdR": 4.0, "MnR": 4.0})
    _approx(retrieval_metrics(torch.zeros(4, 4))["v2t"], {"R@1": 0.0, "MdR": 4.0, "MnR": 4.0})
    sim = torch.tensor([[0.5, 0.5, 0.1],    # true 0.5 tied with one: rank 2
                        [0.3, 0.3, 0.3],    # tied with two: rank 3
                        [0.0, 0.9, 0.2]])   # one above: rank 2
    assert text_to_video_ranks(sim).tolist() == [2, 3, 2]
    # columns: 0.5 vs 0.3, 0.0 -> 1; 0.3 vs 0.5, 0.9 -> 3; 0.2 vs 0.1, 0.3 -> 2
    assert video_to_text_ranks(sim).tolist() == [1, 3, 2]


# five captions of three videos: captions 0, 1 -> video 0; caption 2 -> video 1; captions 3, 4 -> video 2
OWNERS = [0, 0, 1, 2, 2]
MULTI = torch.tensor([[0.9, 0.1, 0.8],
                      [0.3, 0.8, 0.7],
                      [0.2, 0.4, 0.6],
                      [0.7, 0.1, 0.5],
                      [0.1, 0.2, 0.3]])


def test_multi_caption_text_to_video():
    # caption 0: 0.9 best -> 1; caption 1: 0.3 below 0.8, 0.7 -> 3; caption 2: 0.4 below 0.6 -> 2;
    # caption 3: 0.5 below 0.7 -> 2; caption 4: 0.3 best -> 1
    assert text_to_video_ranks(MULTI, OWNERS).tolist() == [1, 3, 2, 2, 1]
    _approx(retrieval_metrics(MULTI, OWNERS)["t2v"], {"R@1": 40.0, "R@5": 100.0, "MdR": 2.0, "MnR": 9 / 5})


def test_multi_caption_video_to_text_clip4clip_convention():
    # each video counts once, by its best caption for the query video:
    # video 0 (own best 0.9): video 1 -> 0.2, video 2 -> max(0.7, 0.1) = 0.7       -> rank 1
    # video 1 (own 0.4):      video 0 -> max(0.1, 0.8) = 0.8, video 2 -> 0.2       -> rank 2
    # video 2 (own best 0.5): video 0 -> max(0.8, 0.7) = 0.8, video 1 -> 0.6       -> rank 3
    assert video_to_text_ranks(MULTI, OWNERS).tolist() == [1, 2, 3]
    _approx(retrieval_metrics(MULTI, OWNERS)["v2t"], {"R@1": 100 / 3, "R@5": 100.0, "MdR": 2.0, "MnR": 2.0})
    assert retrieval_metrics(MULTI, torch.tensor(OWNERS)) == retrieval_metrics(MULTI, np.array(OWNERS))


def test_multi_caption_video_to_text_caption_convention():
    # every caption of another video counts: video 2's best 0.5 is below 0.8, 0.7 (video 0) and 0.6 -> 4
    assert video_to_text_ranks(MULTI, OWNERS, v2t_multi="caption").tolist() == [1, 2, 4]
    _approx(retrieval_metrics(MULTI, OWNERS, v2t_multi="caption")["v2t"], {"MdR": 2.0, "MnR": 7 / 3})
    with pytest.raises(ValueError, match="v2t_multi"):
        retrieval_metrics(MULTI, OWNERS, v2t_multi="mean")


def test_multi_caption_ties_are_pessimistic():
    sim = torch.tensor([[0.5, 0.3],     # video 0's captions: best 0.5 in column 0
                        [0.2, 0.1],
                        [0.5, 0.4]])    # video 1's caption gives video 0 0.5 too: tie -> rank 2
    # column 1: video 1's own 0.4 beats video 0's best 0.3 -> rank 1
    assert video_to_text_ranks(sim, [0, 0, 1]).tolist() == [2, 1]
    assert video_to_text_ranks(sim, [0, 0, 1], v2t_multi="caption").tolist() == [2, 1]


def test_uncaptioned_videos_are_distractors_not_queries():
    sim = torch.tensor([[0.9, 0.1, 0.95],
                        [0.2, 0.8, 0.1]])   # video 2 has no caption; it outscores caption 0's video
    result = retrieval_metrics(sim, [0, 1])
    assert text_to_video_ranks(sim, [0, 1]).tolist() == [2, 1]
    assert video_to_text_ranks(sim, [0, 1]).tolist() == [1, 1]   # two queries, not three
    _approx(result["v2t"], PERFECT)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.rand(3, 4))
    with pytest.raises(ValueError, match="entries"):
        retrieval_metrics(torch.rand(3, 4), [0, 1])
    with pytest.raises(ValueError, match="index"):
        retrieval_metrics(torch.rand(2, 2), [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(torch.zeros(0, 3), [])


def test_ranks_are_chunked_consistently(monkeypatch):
    import adaptvid.tasks.retrieval_metrics as module
    sim = torch.rand(23, 9)
    owners = torch.randint(0, 9, (23,))
    whole = retrieval_metrics(sim, owners), retrieval_metrics(sim, owners, v2t_multi="caption")
    monkeypatch.setattr(module, "_ROWS", 4)
    assert (retrieval_metrics(sim, owners), retrieval_metrics(sim, owners, v2t_multi="caption")) == whole


# --------------------------------------------------------------------------------------------------
# dual softmax
# --------------------------------------------------------------------------------------------------

def test_dual_softmax_by_hand():
    sim = torch.tensor([[1.0, 0.0], [0.5, 0.2]], dtype=torch.float64)
    e = math.exp
    over_texts = [[1.0 * e(1.0) / (e(1.0) + e(0.5)), 0.0 * e(0.0) / (e(0.0) + e(0.2))],
                  [0.5 * e(0.5) / (e(1.0) + e(0.5)), 0.2 * e(0.2) / (e(0.0) + e(0.2))]]
    assert torch.allclose(dual_softmax(sim), torch.tensor(over_texts, dtype=torch.float64))
    over_videos = [[1.0 * e(1.0) / (e(1.0) + e(0.0)), 0.0],
                   [0.5 * e(0.5) / (e(0.5) + e(0.2)), 0.2 * e(0.2) / (e(0.5) + e(0.2))]]
    assert torch.allclose(dual_softmax(sim, dim=1), torch.tensor(over_videos, dtype=torch.float64))
    # temperature divides inside the softmax: T = 0.5 doubles the exponents
    half = [[1.0 * e(2.0) / (e(2.0) + e(1.0)), 0.0], [0.5 * e(1.0) / (e(2.0) + e(1.0)), 0.2 * e(0.4) / (1 + e(0.4))]]
    assert torch.allclose(dual_softmax(sim, temperature=0.5), torch.tensor(half, dtype=torch.float64))


def test_dual_softmax_suppresses_a_hub():
    # video 0 is a hub: caption 1 (true video 1) prefers it, 0.8 vs 0.7, but caption 0 wants it more
    sim = torch.tensor([[0.9, 0.1],
                        [0.8, 0.7]])
    assert text_to_video_ranks(sim).tolist() == [1, 2]
    rescored = dual_softmax(sim, temperature=0.1)
    # column 0 prior: e^9, e^8 normalised -> caption 1 keeps 0.8 * 0.269 = 0.215; column 1: e^1, e^7 ->
    # caption 1 keeps 0.7 * 0.9975 = 0.698
    assert rescored[1, 0].item() == pytest.approx(0.8 / (1 + math.e), rel=1e-5)
    assert text_to_video_ranks(rescored).tolist() == [1, 1]
    _approx(dual_softmax_metrics(sim, temperature=0.1)["t2v"], PERFECT)
    assert retrieval_metrics(sim)["t2v"]["R@1"] == 50.0   # the plain metrics are untouched


# --------------------------------------------------------------------------------------------------
# QB-Norm (dynamic inverted softmax)
# --------------------------------------------------------------------------------------------------

BANK = torch.tensor([[0.9, 0.1, 0.2],
                     [0.8, 0.3, 0.1]], dtype=torch.float64)   # both bank queries retrieve video 0 first


def test_qb_norm_by_hand():
    sim = torch.tensor([[0.7, 0.6, 0.1],    # top-1 is video 0, in the activation set {0}: normalised
                        [0.2, 0.5, 0.4]],   # top-1 is video 1, not in it: unchanged
                       dtype=torch.float64)
    e, beta = math.exp, 2.0
    column_sums = [e(beta * 0.9) + e(beta * 0.8), e(beta * 0.1) + e(beta * 0.3), e(beta * 0.2) + e(beta * 0.1)]
    row0 = [e(beta * s) / z for s, z in zip([0.7, 0.6, 0.1], column_sums)]
    out = qb_norm(sim, BANK, k=1, beta=beta)
    assert torch.allclose(out[0], torch.tensor(row0, dtype=torch.float64))
    assert torch.equal(out[1], sim[1])
    # the hub drops from first to last for the normalised query: 0.369 < 1.091, 0.450
    assert out[0].argsort(descending=True).tolist() == [1, 2, 0]
    assert torch.equal(sim[0], torch.tensor([0.7, 0.6, 0.1], dtype=torch.float64))   # input left as it was


def test_qb_norm_k_widens_the_activation_set():
    sim = torch.tensor([[0.2, 0.5, 0.4]], dtype=torch.float64)
    # k = 2: bank top-2 are {0, 2} and {0, 1}: A = {0, 1, 2}, so this query is normalised too
    e, beta = math.exp, 20.0
    column_sums = [e(beta * 0.9) + e(beta * 0.8), e(beta * 0.1) + e(beta * 0.3), e(beta * 0.2) + e(beta * 0.1)]
    expected = [e(beta * s) / z for s, z in zip([0.2, 0.5, 0.4], column_sums)]
    assert torch.allclose(qb_norm(sim, BANK, k=2), torch.tensor([expected], dtype=torch.float64))


def test_qb_norm_tests_the_query_top1_only():
    bank = torch.tensor([[0.9, 0.8, 0.1, 0.0],
                         [0.7, 0.9, 0.2, 0.1]])   # k = 2: A = {0, 1}
    query = torch.tensor([[0.1, 0.5, 0.6, 0.0]])   # top-1 is 2 (not in A), though its top-2 holds 1
    assert torch.equal(qb_norm(query, bank, k=2, beta=20), query)


def test_qb_norm_is_stable_on_logit_scaled_scores():
    sim = 100 * torch.tensor([[0.7, 0.6, 0.1]])
    # exp(20 * 90) overflows a direct computation; the ratios (e^-400 .. e^600) overflow float32
    out = qb_norm(sim, 100 * BANK.float(), k=1, beta=20)
    assert torch.isfinite(out).all() and (out > 0).all() and out.dtype == torch.float64
    assert out[0].argsort(descending=True).tolist() == [1, 2, 0]
    assert out[0, 1].item() == pytest.approx(math.exp(20 * 60 - 20 * 30) / (1 + math.exp(-20 * 20)),
                                        rel=1e-3)   # float32 inputs: 20 x their rounding in the exponent


def test_qb_norm_refuses_a_mismatched_bank():
    with pytest.raises(ValueError, match="gallery"):
        qb_norm(torch.rand(2, 3), torch.rand(4, 5))


# --------------------------------------------------------------------------------------------------
# chunked similarity
# --------------------------------------------------------------------------------------------------

def test_similarity_in_chunks_is_cosine():
    text, video = torch.randn(10, 8), torch.randn(7, 8)
    expected = torch.nn.functional.normalize(text, dim=-1) @ torch.nn.functional.normalize(video, dim=-1).t()
    for chunk in (3, 10, 4096):
        assert torch.allclose(similarity_in_chunks(text, video, chunk=chunk), expected, atol=1e-6)
    assert similarity_in_chunks(text.half(), video.numpy(), chunk=4).dtype == torch.float32
    assert similarity_in_chunks(torch.zeros(0, 8), video).shape == (0, 7)
