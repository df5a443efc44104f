"""CLIP-ViP: video proxy tokens and proxy-guided attention (adaptvid/methods/clip_vip.py).

Equality with the official code (microsoft/XPretrain CLIP-ViP/src/modeling/CLIP_ViP.py, unmodified) is
tests/test_clip_vip_official.py, on the fixture in tests/fixtures/clip-vip/ (1.4e-6). Here: the layout, the attention pattern
against a reference written per query from the paper, what trains, the parameter counts of the official
definitions, retrieval training and FLOPs.
"""
import pytest
import torch
import torch.nn.functional as F

import adaptvid
from adaptvid.methods.clip_vip import ProxyGuidedAttention, proxy_guided_mask
from adaptvid.model.profile import profile_model
from conftest import TINY_BACKBONES, check_one_training_step, retrieval_fixed_batch_losses, tiny_video

FRAMES = 4
PROXIES = 4          # the official default: add_cls_num 3 + the CLS
PATCHES = 16         # 64 px / patch 16 on the tiny backbones
LABELS = torch.tensor([0, 2])


def _build(backbone="tiny-clip", **options):
    return adaptvid.build_model(backbone, "clip-vip", num_classes=3, num_frames=FRAMES, **options)


def _perturbed_frame(video, frame=1):
    other = video.clone()
    other[:, :, frame] += torch.randn(other[:, :, frame].shape, generator=torch.Generator().manual_seed(7))
    return other


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_shapes_and_one_shared_copy_of_the_proxies_per_video(backbone):
    model = _build(backbone).eval()
    video = tiny_video(2, FRAMES)
    with torch.no_grad():
        assert model(video).shape == (2, 3)
        assert model.encode_video(video).shape == (2, model.backbone.embed_dim)   # projected (joint space)
        tokens = model.frame_tokens(video).reshape(2, FRAMES, PROXIES + PATCHES, -1)
    # each frame: [M proxies, its patches]; its own CLS is gone; later contexts count the proxies as prefix
    assert model.backbone.num_prefix_tokens == PROXIES
    assert torch.equal(tokens[:, :, :PROXIES], tokens[:, :1, :PROXIES].expand_as(tokens[:, :, :PROXIES]))
    assert not torch.equal(tokens[:, 0, PROXIES:], tokens[:, 1, PROXIES:])
    # the readout is the first proxy through the final norm and projection
    with torch.no_grad():
        expected = model.backbone.head(tokens[:, 0, 0])
        torch.testing.assert_close(model.encode_video(video), expected, rtol=1e-6, atol=1e-6)


def test_the_mask_is_the_papers_pattern():
    mask = proxy_guided_mask(2, 3, 2)   # [p0, p1, f0 f0, f1 f1, f2 f2]
    owner = [None, None, 0, 0, 1, 1, 2, 2]
    for i, qi in enumerate(owner):
        for j, kj in enumerate(owner):
            allowed = qi is None or kj is None or qi == kj   # proxies see all; frames see proxies and themselves
            assert bool(mask[i, j]) == allowed, (i, j)


def _reference_attention(view, xn, frames, m):
    """Written from the paper, one query group at a time: each frame's tokens attend to [proxies, own frame];
    the proxies attend to [proxies, every frame] (no mask involved)."""
    n, length, width = xn.shape
    videos = n // frames
    per_frame = xn.reshape(videos, frames, length, width)
    proxies, own = per_frame[:, 0, :m], per_frame[:, :, m:]
    out = torch.empty(videos, frames, length, width)
    for b in range(videos):
        every = torch.cat([proxies[b], own[b].flatten(0, 1)])[None]
        q, k, v = view.qkv(every)
        out[b, :, :m] = view.attn_out(F.scaled_dot_product_attention(q[:, :, :m], k, v))[0]
        for t in range(frames):
            seen = torch.cat([proxies[b], own[b, t]])[None]
            q, k, v = view.qkv(seen)
            out[b, t, m:] = view.attn_out(F.scaled_dot_product_attention(q[:, :, m:], k, v))[0]
    return out.reshape(n, length, width)


@pytest.mark.parametrize("mode", ["masked", "split"])
@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_the_attention_equals_the_per_group_reference(backbone, mode):
    model = _build(backbone, vip_attention=mode)
    view = model.backbone.views[0]
    module = model.backbone.slots[0].attention["clip_vip"]
    assert isinstance(module, ProxyGuidedAttention)
    xn = torch.randn(2, 1, PROXIES + PATCHES, model.backbone.width).repeat(1, FRAMES, 1, 1)
    xn[:, :, PROXIES:] = torch.randn(2, FRAMES, PATCHES, model.backbone.width)
    xn = xn.flatten(0, 1)
    ctx = model.backbone.context(FRAMES)
    with torch.no_grad():
        torch.testing.assert_close(module(xn, ctx), _reference_attention(view, xn, FRAMES, PROXIES),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["masked", "split"])
@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_no_block_lets_a_frame_see_another_frames_tokens(backbone, mode):
    """In every block's attention, frame 2's tokens change the proxies' output but not the other frames' tokens."""
    model = _build(backbone, vip_attention=mode)
    ctx = model.backbone.context(FRAMES)
    width = model.backbone.width
    xn = torch.randn(2, 1, PROXIES + PATCHES, width).repeat(1, FRAMES, 1, 1)
    xn[:, :, PROXIES:] = torch.randn(2, FRAMES, PATCHES, width)
    other = xn.clone()
    other[:, 1, PROXIES:] += 1.0                                   # frame 2's tokens only
    for slot in model.backbone.slots:
        module = slot.attention["clip_vip"]
        with torch.no_grad():
            a = module(xn.flatten(0, 1), ctx).reshape(2, FRAMES, PROXIES + PATCHES, width)
            b = module(other.flatten(0, 1), ctx).reshape(2, FRAMES, PROXIES + PATCHES, width)
        for frame in (0, 2, 3):
            assert torch.equal(a[:, frame, PROXIES:], b[:, frame, PROXIES:]), frame
        assert not torch.allclose(a[:, :, :PROXIES], b[:, :, :PROXIES])


def test_through_the_tower_frames_meet_only_through_the_proxies():
    """Perturbing frame 2's pixels: after block 1, frame 1's tokens are unchanged (the proxies entering it do
    not depend on the pixels) and the proxies have changed; from block 2 on, frame 1's tokens change too —
    through the proxies, as the paper intends (it is no per-frame encoder)."""
    model = _build("tiny-hf-clip").eval()
    video = tiny_video(2, FRAMES)
    ctx = model.backbone.context(FRAMES)
    outs = []
    for clip in (video, _perturbed_frame(video)):
        frames = clip.transpose(1, 2).flatten(0, 1)
        with torch.no_grad():
            _, layers = model.backbone.forward_tokens(frames, ctx, return_layers=(0, 1))
        outs.append([x.reshape(2, FRAMES, PROXIES + PATCHES, -1) for x in layers])
    (first, second), (first_p, second_p) = outs
    assert torch.equal(first[:, 0, PROXIES:], first_p[:, 0, PROXIES:])
    assert not torch.allclose(first[:, :, :PROXIES], first_p[:, :, :PROXIES])
    assert not torch.allclose(second[:, 0, PROXIES:], second_p[:, 0, PROXIES:])


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_gradients_reach_exactly_what_trains(backbone):
    model = _build(backbone)
    new = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.tower.")}
    assert new == {"backbone.before_pre_norm.clip_vip.added_proxy_tokens",
                   "backbone.before_pre_norm.clip_vip.temporal_embedding", "head.weight", "head.bias"}
    assert all(p.requires_grad for p in model.backbone.tower.parameters())   # the paper fine-tunes the tower
    assert model.text is None                                                # a linear head: no text tower
    check_one_training_step(model, tiny_video(2, FRAMES), LABELS)


def test_with_a_frozen_tower_only_the_proxies_the_temporal_embedding_and_the_head_train():
    model = _build(train_visual=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.before_pre_norm.clip_vip.added_proxy_tokens",
                         "backbone.before_pre_norm.clip_vip.temporal_embedding", "head.weight", "head.bias"}
    check_one_training_step(model, tiny_video(2, FRAMES), LABELS)


def test_other_clip_lengths_resize_the_temporal_embedding_linearly():
    model = _build()
    module = model.backbone.before_pre_norm["clip_vip"]
    with torch.no_grad():
        module.temporal_embedding.copy_(torch.arange(FRAMES, dtype=torch.float32)[None, :, None].expand_as(
            module.temporal_embedding))
    # F.interpolate(linear, align_corners=False) from 4 to 2 frames: the means of neighbouring pairs
    torch.testing.assert_close(module.time_table(2)[:, 0], torch.tensor([0.5, 2.5]))
    with torch.no_grad():
        assert model.eval()(tiny_video(2, 6)).shape == (2, 3)


@pytest.mark.parametrize("backbone, name, visual, text", [
    ("clip", "ViT-B/16", 86_192_640, 63_428_097),
    ("clip-b32", "ViT-B/32", 87_849_216, 63_428_097),
])
def test_trainable_parameters_on_clip_vit_b_match_the_official_definitions(backbone, name, visual, text):
    """Official (CLIP_ViP.py + the retrieval configs, 12 frames, add_cls_num 3): new = added_cls (3 x 768) +
    temporal_embedding (12 x 768) = 11,520; the retrieval run trains the whole CLIPModel besides: image tower
    (visual) + text tower with the logit scale (text), from transformers' CLIP definitions."""
    model = adaptvid.build_model(backbone, "clip-vip", weights="random", num_frames=12)
    new = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad
              and not n.startswith(("backbone.tower.", "text.")))
    assert new == 3 * 768 + 12 * 768 == 11_520
    assert sum(p.numel() for p in model.backbone.tower.parameters()) == visual
    trainable, _ = adaptvid.model.count_parameters(model)
    assert trainable == visual + text + new, name


def test_retrieval_training_lowers_the_contrastive_loss_on_a_fixed_batch(demo):
    model = adaptvid.build_model("tiny-clip", "clip-vip", num_frames=FRAMES)
    assert model.text is not None and all(p.requires_grad for p in model.text.parameters())
    losses = retrieval_fixed_batch_losses(model, demo / "captions_train.jsonl", steps=6)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] * 0.8, losses


def test_retrieval_run_saves_a_checkpoint_that_reloads_the_trained_proxies(demo, tmp_path):
    from safetensors.torch import load_file

    result = adaptvid.adapt(task="retrieval", backbone="tiny-clip", method="clip-vip",
                            train=str(demo / "captions_train.jsonl"), val=str(demo / "captions_val.jsonl"),
                            output=str(tmp_path / "r"), epochs=1, batch_size=6, num_workers=0, progress=False,
                            frames=FRAMES)
    assert result["steps"] == 3 and "R@1" in result["t2v"]
    saved = load_file(str(tmp_path / "r" / "adapter.safetensors"))
    model = adaptvid.load_model(tmp_path / "r").eval()
    assert model.backbone.num_prefix_tokens == PROXIES
    for name in ("added_proxy_tokens", "temporal_embedding"):
        key = f"backbone.before_pre_norm.clip_vip.{name}"
        assert torch.equal(dict(model.named_parameters())[key], saved[key])
    assert saved["backbone.before_pre_norm.clip_vip.temporal_embedding"].abs().sum() > 0   # trained off zero
    assert any(k.startswith("text.") for k in saved) and any(k.startswith("backbone.tower.") for k in saved)
    with torch.no_grad():
        assert torch.isfinite(model.encode_video(tiny_video(2, FRAMES))).all()


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_the_split_attention_gives_the_masked_model(backbone):
    masked = _build(backbone, vip_attention="masked").eval()
    split = _build(backbone, vip_attention="split").eval()
    split.load_state_dict(masked.state_dict())
    video = tiny_video(2, FRAMES)
    with torch.no_grad():
        torch.testing.assert_close(split.encode_video(video), masked.encode_video(video), rtol=1e-5, atol=1e-6)


def test_flops_are_counted_with_the_proxy_guided_attention():
    masked, split = (profile_model(_build(vip_attention=mode)) for mode in ("masked", "split"))
    # both above the bare tower on the same frames (the M - 1 added proxies in every frame, the proxies'
    # attention over the video); the mask makes every frame token score every other frame's tokens too
    assert masked["gflops_bare_per_view"] == split["gflops_bare_per_view"]
    assert masked["gflops_per_view"] > split["gflops_per_view"] > split["gflops_bare_per_view"]


@pytest.mark.parametrize("other, match", [
    ("aim", "aim's temporal adapter"),
    ("vita-clip", "vita-clip builds its local prompts"),
    ("evl", "both claim the model's readout"),
    ("zeroi2v", "both claim the model's attention"),
    ("lora", "do not see lora's update"),
    ("dualpath", "both claim the model's readout"),
])
def test_pairs_that_cannot_work_are_refused_with_the_reason(other, match):
    for names in (f"clip-vip,{other}", f"{other},clip-vip"):
        with pytest.raises(ValueError, match=match):
            adaptvid.build_model("tiny-clip", names, class_names=["a", "b", "c"], num_frames=FRAMES)
    with pytest.raises(ValueError, match="inserts tokens after the CLS token"):
        adaptvid.build_model("tiny-clip", "clip-vip,vpt", num_classes=3, num_frames=FRAMES, vpt_depth="shallow")


def test_lora_on_a_transformers_tower_and_st_adapter_compose():
    for names, options in (("clip-vip,lora", {"train_visual": False}), ("clip-vip,st-adapter", {"bottleneck": 8})):
        model = adaptvid.build_model("tiny-hf-clip", names, num_classes=3, num_frames=FRAMES, **options)
        check_one_training_step(model, tiny_video(2, FRAMES), LABELS, all_trainable_move=False, nonzero_grads=False)
        if "lora" in names:   # the proxy-guided attention runs through LoRA's updated q/k/v/out projections
            lora_b = [p for n, p in model.named_parameters() if "lora_B" in n and "self_attn" in n]
            assert lora_b and all(p.grad.abs().sum() > 0 for p in lora_b)
