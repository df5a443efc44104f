"""Speed-ups of EVL, AIM and X-CLIP (benchmarks/bench_peers.py) give what the previous code gave.

Each test keeps the previous implementation as a reference computed here, in the test, and
compares in float32 (max abs diff <= 1e-5; gradients summed over many tokens: 1e-5 relative to their
size), outputs and gradients; the counted FLOPs are unchanged.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import adaptvid
from adaptvid import build_model
from adaptvid.backbones import FrameContext
from adaptvid.methods.evl import TemporalCrossAttention, relative_position_index, relative_position_product
from conftest import TINY_BACKBONES, tiny_video

TOL = 1e-5


# -- EVL: the relative-position product without the unrolled (Np, Np, D) table ------------------------

def _unrolled_product(affinity, table, grid):
    """The previous code (and the official one): gather the (Np, Np, D) table, then one einsum."""
    n = grid[0] * grid[1]
    unrolled = table[relative_position_index(grid).reshape(-1)].reshape(n, n, -1)
    return torch.einsum("bqk,qkd->bqd", affinity, unrolled)


def _affinity(batch, grid, seed):
    n = grid[0] * grid[1]
    return torch.randn(batch, n, n, generator=torch.Generator().manual_seed(seed)).softmax(-1)


@pytest.mark.parametrize("grid", [(2, 3), (3, 2), (4, 4), (1, 5), (14, 14)])
def test_relative_position_product_equals_the_unrolled_table(grid):
    h, w = grid
    affinity = _affinity(3, grid, seed=h * 10 + w)
    table = torch.randn((2 * h - 1) * (2 * w - 1), 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():   # the fused in-place path
        fused = relative_position_product(affinity, table, grid)
    reference = _unrolled_product(affinity, table, grid)
    assert fused.shape == reference.shape == (3, h * w, 16)
    assert (fused - reference).abs().max() <= TOL

    # with autograd (a trainable table and affinity): the out-of-place path, same values and gradients
    ours_t, ours_a = table.clone().requires_grad_(), affinity.clone().requires_grad_()
    ref_t, ref_a = table.clone().requires_grad_(), affinity.clone().requires_grad_()
    weights = torch.randn(3, h * w, 16, generator=torch.Generator().manual_seed(2))
    out = relative_position_product(ours_a, ours_t, grid)
    (out * weights).sum().backward()
    (_unrolled_product(ref_a, ref_t, grid) * weights).sum().backward()
    assert (out - reference).abs().max() <= TOL
    assert (ours_t.grad - ref_t.grad).abs().max() <= TOL and (ours_a.grad - ref_a.grad).abs().max() <= TOL


def test_relative_position_product_counts_the_flops_of_the_unrolled_product():
    grid = (3, 4)
    affinity, table = _affinity(5, grid, seed=3), torch.randn(5 * 7, 8)
    counts = []
    for fn, grad in ((relative_position_product, False), (relative_position_product, True), (_unrolled_product, False)):
        counter = FlopCounterMode(display=False)
        with torch.set_grad_enabled(grad), counter:
            fn(affinity.clone().requires_grad_(grad), table, grid)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == counts[2] == 2 * 5 * 12 * 12 * 8


def test_temporal_cross_attention_equals_the_previous_formula():
    grid, prefix, dim, frames = (3, 4), 1, 8, 4
    module = TemporalCrossAttention(dim, grid)
    with torch.no_grad():
        module.w_prev.normal_()
        module.w_next.normal_()
    ctx = FrameContext(num_frames=frames, grid=grid, num_prefix_tokens=prefix)
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(2 * frames, 2, prefix + 12, 4, generator=gen) for _ in range(2))

    def half(q, k, table):   # the previous TemporalCrossAttention._half
        affinity = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1).mean(dim=2)
        n = module.index.shape[0]
        return torch.einsum("btqk,qkd->btqd", affinity, table[module.index.reshape(-1)].reshape(n, n, -1))

    qu, ku = q[:, :, prefix:].reshape(2, frames, 2, 12, 4), k[:, :, prefix:].reshape(2, frames, 2, 12, 4)
    feature = F.pad(half(qu[:, 1:], ku[:, :-1], module.w_prev), (0, 0, 0, 0, 1, 0)) + \
        F.pad(half(qu[:, :-1], ku[:, 1:], module.w_next), (0, 0, 0, 0, 0, 1))
    reference = F.pad(feature, (0, 0, prefix, 0))
    with torch.no_grad():
        assert (module(q, k, ctx) - reference).abs().max() <= TOL
    out = module(q, k, ctx)   # training: the parameters require grad
    assert (out - reference).abs().max() <= TOL and out.requires_grad


# -- AIM: the temporal attention through the q/k/v handles --------------------------------------------

def _previous_temporal(module, x, t):
    """The previous TemporalAdaptation.forward: the residual stream regrouped along time, ``view.attn``."""
    bt, n, d = x.shape
    xt = x.reshape(bt // t, t, n, d).transpose(1, 2).reshape(-1, t, d)
    xt = module.adapter(module.view.attn(module.view.norm1(xt)))
    xt = xt.reshape(bt // t, n, t, d).transpose(1, 2).reshape(bt, n, d)
    return x + module.drop_path(xt, t)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_aim_temporal_attention_equals_the_previous_formula(backbone):
    model = build_model(backbone, "aim", num_classes=3, num_frames=4, drop_path=0.0)
    ctx = model.backbone.context(4)
    x = torch.randn(8, 17, model.backbone.width, generator=torch.Generator().manual_seed(5))
    for slot in model.backbone.slots:
        module = slot.before_attn["aim_temporal"]
        assert module._attention_through_handles()
        with torch.no_grad():
            for p in module.adapter.parameters():   # off the zero init, or the branch is 0 on both sides
                p.normal_(std=0.1)
        for training in (False, True):
            module.train(training)
            ours = module(x, ctx)
            ours.square().sum().backward()
            ours_grads = [p.grad.clone() for p in module.adapter.parameters()]
            module.zero_grad()
            reference = _previous_temporal(module, x, 4)
            reference.square().sum().backward()
            assert (ours - reference).abs().max() <= TOL
            # gradients summed over many tokens: the same bound relative to their size
            assert all((a - p.grad).abs().max() <= TOL * (1 + p.grad.abs().max())
                       for a, p in zip(ours_grads, module.adapter.parameters()))
            module.zero_grad()


def test_aim_keeps_the_library_attention_where_the_handles_would_differ():
    # SSv2 config: a second adapter inside the temporal attention's input (the previous path);
    # lora wraps open_clip's fused attention, which the q/k/v handles do not see.
    two = build_model("tiny-clip", "aim", num_classes=3, num_frames=4, num_tadapter=2)
    lora = build_model("tiny-clip", "aim,lora", num_classes=3, num_frames=4)
    temporal = [slot.before_attn["aim_temporal"] for slot in lora.backbone.slots]
    assert not any(m._attention_through_handles() for m in temporal)
    module = two.backbone.slots[0].before_attn["aim_temporal"]
    assert module.adapter_in is not None
    with torch.no_grad():
        model = build_model("tiny-clip", "aim", num_classes=3, num_frames=4)
        assert model(tiny_video()).shape == two(tiny_video()).shape == lora(tiny_video()).shape == (2, 3)


# -- X-CLIP: class texts encoded once while the text side is unchanged --------------------------------

def test_xclip_encodes_fixed_class_texts_once_and_again_after_a_change():
    model = adaptvid.build_model("tiny-clip", "x-clip", class_names=["a", "b c", "d"], num_frames=4).eval()
    head, video = model.head, tiny_video()
    calls = []
    encode = head.encode_classes
    head.encode_classes = lambda: calls.append(1) or encode()
    with torch.no_grad():
        first = model(video)
        assert torch.equal(model(video), first) and len(calls) == 1    # cached
        model.train()
        model(video)                                                   # frozen text: still valid in train mode
        assert len(calls) == 1
        model.eval()
        text_weight = next(p for p in model.text.parameters() if p is not model.text.logit_scale)
        text_weight.mul_(1.5)                                          # a frozen weight changed in place
        changed = model(video)
        assert len(calls) == 2 and not torch.equal(changed, first)
        fresh = head.logits(model.encode_video(video), encode(), model._video_embedding(video)[1])
        assert (changed - fresh).abs().max() <= TOL                    # the cache holds the new texts
        adaptvid.set_classes(model, ["e", "f"])
        assert model(video).shape == (2, 2) and len(calls) == 3
