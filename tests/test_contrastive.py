"""Symmetric InfoNCE by hand, and the all-gather with gradients checked with two real processes (gloo):
the DDP-averaged gradients of the gathered loss equal one process's gradients on the whole batch."""
import math
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adaptvid.tasks.contrastive import MAX_LOGIT_SCALE, contrastive_loss, gather_with_grad, symmetric_infonce

# --------------------------------------------------------------------------------------------------
# symmetric InfoNCE on a 3 x 3 example, by hand
# --------------------------------------------------------------------------------------------------

A = 1 / math.sqrt(2)


def _hand_loss(scale: float) -> float:
    """Texts e1, e2, e3; videos e1, e2, (e2 + e3)/sqrt 2, so cos = [[1, 0, 0], [0, 1, a], [0, 0, a]]."""
    e = math.exp
    t2v = [-math.log(e(scale) / (e(scale) + 1 + 1)),                       # row 0: 1, 0, 0
           -math.log(e(scale) / (1 + e(scale) + e(scale * A))),            # row 1: 0, 1, a
           -math.log(e(scale * A) / (1 + 1 + e(scale * A)))]               # row 2: 0, 0, a (true: a)
    v2t = [-math.log(e(scale) / (e(scale) + 1 + 1)),                       # column 0: 1, 0, 0
           -math.log(e(scale) / (1 + e(scale) + 1)),                       # column 1: 0, 1, 0
           -math.log(e(scale * A) / (1 + e(scale * A) + e(scale * A)))]    # column 2: 0, a, a (true: a)
    return (sum(t2v) / 3 + sum(v2t) / 3) / 2


def _three_by_three():
    text = torch.eye(3)
    video = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, A, A]])
    return text, video


def test_symmetric_infonce_by_hand():
    text, video = _three_by_three()
    loss = symmetric_infonce(text, video, torch.tensor(math.log(2.0)))   # scale exp(log 2) = 2
    assert loss.item() == pytest.approx(_hand_loss(2.0), abs=1e-6)


def test_symmetric_infonce_normalises_its_inputs_and_takes_a_float_scale():
    text, video = _three_by_three()
    scaled = symmetric_infonce(text * torch.tensor([[3.0], [0.5], [7.0]]), video * 4.0, math.log(2.0))
    assert scaled.item() == pytest.approx(_hand_loss(2.0), abs=1e-6)


def test_logit_scale_is_clamped_at_log_100():
    text, video = _three_by_three()
    scale = torch.tensor(math.log(1000.0), requires_grad=True)
    loss = symmetric_infonce(text, video, scale)
    assert loss.item() == pytest.approx(_hand_loss(100.0), rel=1e-5)
    loss.backward()
    assert scale.grad.item() == 0.0   # above the clamp the temperature is not trained (as CLIP's clamp)
    assert MAX_LOGIT_SCALE == pytest.approx(math.log(100.0))


def test_symmetric_infonce_rejects_unpaired_batches():
    with pytest.raises(ValueError, match="pairs"):
        symmetric_infonce(torch.randn(3, 4), torch.randn(2, 4), 1.0)


def test_without_distributed_gather_is_identity_and_loss_is_local():
    assert not dist.is_initialized()
    x = torch.randn(4, 3, requires_grad=True)
    assert gather_with_grad(x) is x
    t, v = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.equal(contrastive_loss(t, v, 2.0), symmetric_infonce(t, v, 2.0))
    assert torch.equal(contrastive_loss(t, v, 2.0, gather=False), symmetric_infonce(t, v, 2.0))


# --------------------------------------------------------------------------------------------------
# two real processes
# --------------------------------------------------------------------------------------------------

WORLD = 2
SPLITS = {"halves": (4, 4), "uneven": (3, 5)}   # pairs held by rank 0 and rank 1 (8 in all)


class _Pair(torch.nn.Module):
    """A shared projection for both modalities, a video-only head and CLIP's learnable log-scale."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 5)
        self.video_head = torch.nn.Linear(5, 5)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, text, video):
        return self.proj(text), self.video_head(self.proj(video))


def _local_slice_gather(tensor):
    """The alternative: gather without gradient, the local tensor put back in its slot (equal sizes)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts)


def _run(model, text, video, loss_fn):
    text, video = text.clone().requires_grad_(True), video.clone().requires_grad_(True)
    loss = loss_fn(*model(text, video), model.logit_scale)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return {"loss": loss.detach(), "grads": grads, "text_grad": text.grad, "video_grad": video.grad}


def _worker(rank, store, batch, state, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        results = {}
        variants = {
            "gather_with_grad": lambda t, v, s: contrastive_loss(t, v, s, gather=True),
            "local_slice": lambda t, v, s: symmetric_infonce(_local_slice_gather(t), _local_slice_gather(v), s),
        }
        for split, sizes in SPLITS.items():
            start = sum(sizes[:rank])
            local = slice(start, start + sizes[rank])
            for name, loss_fn in variants.items():
                if name == "local_slice" and len(set(sizes)) > 1:
                    continue
                model = _Pair()
                model.load_state_dict(state)
                out = _run(model, batch["text"][local], batch["video"][local], loss_fn)
                for grad in out["grads"].values():   # what DDP does: mean over processes
                    dist.all_reduce(grad)
                    grad /= WORLD
                results[(split, name)] = out
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gathered_loss_and_ddp_mean_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    batch = {"text": torch.randn(8, 6, generator=generator), "video": torch.randn(8, 6, generator=generator)}
    torch.manual_seed(0)
    reference_model = _Pair()
    state = {k: v.clone() for k, v in reference_model.state_dict().items()}
    reference = _run(reference_model, batch["text"], batch["video"], symmetric_infonce)

    mp.spawn(_worker, args=(str(tmp_path / "store"), batch, state, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    assert all(g.abs().sum() > 0 for g in reference["grads"].values())   # every parameter is exercised
    for split, sizes in SPLITS.items():
        for rank, results in enumerate(ranks):
            out = results[(split, "gather_with_grad")]
            # every process computes the global loss (the mean over all 8 pairs) ...
            assert _close(out["loss"], reference["loss"]), (split, rank)
            # ... and DDP's mean of the unscaled losses' gradients is the single-process gradient, for the
            # encoders (through the gather) and the logit scale (outside it) alike
            for name, grad in out["grads"].items():
                assert _close(grad, reference["grads"][name]), (split, rank, name)
            # the activation gradients each process sees are world_size x the single-process ones
            # (the all-reduce sum); DDP's 1 / world_size brings the parameters back
            start = sum(sizes[:rank])
            local = slice(start, start + sizes[rank])
            assert _close(out["text_grad"], WORLD * reference["text_grad"][local]), (split, rank)
            assert _close(out["video_grad"], WORLD * reference["video_grad"][local]), (split, rank)

    # The alternative (local slice back in place, no gradient exchange): the same loss, but DDP's mean
    # gives the encoders 1 / world_size of the gradient while the logit scale gets all of it, so no
    # single factor on the loss makes every parameter right.
    for results in ranks:
        out = results[("halves", "local_slice")]
        assert _close(out["loss"], reference["loss"])
        for name, grad in out["grads"].items():
            if name == "logit_scale":
                assert _close(grad, reference["grads"][name])
            else:
                assert _close(WORLD * grad, reference["grads"][name]), name
                assert not _close(grad, reference["grads"][name]), name
