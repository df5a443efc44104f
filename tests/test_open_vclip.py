"""Open-VCLIP: expanded temporal view (t-1, t, t+1), per-frame logits averaged, weight patching and IWO."""
import copy
import random

import pytest
import torch
import torch.nn.functional as F

import adaptvid
from adaptvid.backbones.base import attention
from adaptvid.methods.open_vclip import (OPEN_VCLIP_TEMPLATES, ExpandedTemporalAttention, iwo_loss, patch_weights)
from conftest import check_one_training_step, fixed_batch_losses, tiny_video

CLASSES = ["square growing", "disc fading", "red turning blue"]
TEXT_BACKBONES = ("tiny-clip", "tiny-hf-clip")


def _build(backbone="tiny-clip", frames=4, **options):
    return adaptvid.build_model(backbone, "open-vclip", class_names=CLASSES, num_frames=frames, **options)


def _trained_copy(model):
    """The model after one AdamW step on a fixed batch (so its weights differ from CLIP's)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    F.cross_entropy(model(tiny_video()), torch.tensor([0, 2])).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


def _block_inputs(model, frames):
    """Normalised tokens of the first block for a (frames,)-clip, and its attention module and view."""
    backbone = model.backbone
    images = torch.randn(2 * frames, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    xn = backbone.views[0].norm1(backbone.embed(images))
    module = backbone.slots[0].attention["open-vclip"]
    return xn, module, backbone.views[0]


# -- the expanded temporal view ----------------------------------------------------------------

@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_one_frame_with_existing_ends_is_exactly_the_plain_attention(backbone):
    model = _build(backbone, frames=1, ovc_ends="existing")
    xn, module, view = _block_inputs(model, 1)
    with torch.no_grad():
        assert torch.equal(module(xn, model.backbone.context(1)), view.attn_out(attention(*view.qkv(xn))))


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_identical_frames_give_the_image_model(backbone):
    # Attending to 2 or 3 copies of the same keys and values is attending to one copy.
    model = _build(backbone, ovc_ends="existing").eval()
    image = torch.randn(2, 3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        frames = model.encode_frames(image.expand(-1, -1, 4, -1, -1))                  # (2, 4, E)
        reference = model.backbone.library_forward(image[:, :, 0])                      # the library's own image model
    assert torch.allclose(frames, reference[:, None].expand_as(frames), atol=1e-6, rtol=0), \
        (frames - reference[:, None]).abs().max()


def test_zero_ends_attend_to_zero_keys_as_the_official_code():
    model = _build(frames=2)
    xn, module, view = _block_inputs(model, 2)
    with torch.no_grad():
        out = module(xn, model.backbone.context(2))
        q, k, v = view.qkv(xn)                                          # (4, heads, L, d): clips x frames 0, 1
        zeros = torch.zeros_like(k[:1])
        # frame 0: [next = frame 1, previous = zeros, itself]; frame 1: [next = zeros, previous = frame 0, itself]
        first = attention(q[:1], torch.cat([k[1:2], zeros, k[:1]], 2), torch.cat([v[1:2], zeros, v[:1]], 2))
        second = attention(q[1:2], torch.cat([zeros, k[:1], k[1:2]], 2), torch.cat([zeros, v[:1], v[1:2]], 2))
        expected = view.attn_out(torch.cat([first, second]))
    assert torch.allclose(out[:2], expected, atol=1e-6)
    existing = ExpandedTemporalAttention(model.backbone, 0, "existing")
    with torch.no_grad():  # masking the missing neighbour is a different (zero-free) computation
        assert not torch.allclose(existing(xn, model.backbone.context(2))[:2], expected, atol=1e-4)


@pytest.mark.parametrize("ends", ["zero", "existing"])
def test_each_frame_sees_only_its_neighbours_in_one_block(ends):
    model = _build(frames=4, ovc_ends=ends)
    xn, module, _ = _block_inputs(model, 4)
    changed = xn.clone()
    changed[3] += 1.0                                                    # clip 0, frame 3
    ctx = model.backbone.context(4)
    with torch.no_grad():
        before, after = module(xn, ctx), module(changed, ctx)
    same = [torch.equal(before[i], after[i]) for i in range(8)]
    assert same == [True, True, False, False, True, True, True, True]


# -- readout, training ---------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_logits_are_per_frame_cosine_logits_averaged_over_frames(backbone):
    model = _build(backbone).eval()
    assert model.head.templates == OPEN_VCLIP_TEMPLATES and len(OPEN_VCLIP_TEMPLATES) == 28
    video = tiny_video()
    with torch.no_grad():
        frames = F.normalize(model.encode_frames(video), dim=-1)                  # (B, T, E)
        classes = model.head.class_embeddings()
        expected = (model.text.logit_scale.exp() * frames @ classes.t()).mean(dim=1)
        assert torch.allclose(model(video), expected, atol=1e-5)


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_image_tower_and_temperature_train_text_frozen(backbone):
    model = _build(backbone)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {f"backbone.tower.{n}" for n, _ in model.backbone.tower.named_parameters()} | {"text.logit_scale"}
    text_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("text.") and not p.requires_grad}
    check_one_training_step(model, tiny_video(), torch.tensor([0, 2]))
    assert all(torch.equal(p, text_before[n]) for n, p in model.named_parameters() if n in text_before)


def test_train_text_option_trains_the_text_tower_but_its_word_table():
    model = _build(train_text=True)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["text.token_embedding.weight"]
    check_one_training_step(model, tiny_video(), torch.tensor([0, 2]))


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_loss_goes_down_on_a_fixed_batch(backbone):
    model = _build(backbone)
    video, labels = tiny_video(), torch.tensor([0, 2])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    losses = fixed_batch_losses(model, video, labels, steps=10, optimizer=optimizer)
    assert losses[-1] < 0.5 * losses[0], losses


def test_trainable_count_on_vit_b16_is_the_image_tower_and_the_temperature():
    model = adaptvid.build_model("clip", "open-vclip", class_names=["a"], weights="random", keep_original_weights=False, ovc_iwo_weight=0)
    assert adaptvid.count_parameters(model)[0] == 86_192_640 + 1
    assert not hasattr(model, "open_vclip_original")


# -- weight patching and IWO -----------------------------------------------------------------------

def test_patching_at_0_and_1_gives_the_original_and_the_finetuned_weights_exactly():
    fresh = _build()
    tuned = _trained_copy(fresh)
    trained = [n for n, p in tuned.named_parameters() if p.requires_grad]
    for ratio, reference in ((0.0, fresh), (1.0, tuned)):
        patched = patch_weights(copy.deepcopy(tuned), ratio=ratio)
        for name in trained:
            assert torch.equal(dict(patched.named_parameters())[name], dict(reference.named_parameters())[name]), name
    half = patch_weights(copy.deepcopy(tuned), ratio=0.5)
    for name in trained:
        midpoint = (dict(fresh.named_parameters())[name] + dict(tuned.named_parameters())[name]) / 2
        assert torch.allclose(dict(half.named_parameters())[name], midpoint, atol=1e-7), name


def test_patching_with_an_explicit_original_model_or_backbone():
    fresh = _build(keep_original_weights=False, ovc_iwo_weight=0)
    tuned = _trained_copy(fresh)
    with pytest.raises(ValueError, match="kept no copy"):
        patch_weights(copy.deepcopy(tuned))
    by_model = patch_weights(copy.deepcopy(tuned), original=fresh, ratio=0.0)
    by_backbone = patch_weights(copy.deepcopy(tuned), original=adaptvid.create_backbone("tiny-clip"), ratio=0.0)
    for name, p in fresh.named_parameters():
        assert torch.equal(dict(by_model.named_parameters())[name], p), name
        assert torch.equal(dict(by_backbone.named_parameters())[name], p), name
    with pytest.raises(ValueError, match="patch ratio"):
        patch_weights(tuned, original=fresh, ratio=1.5)


def test_checkpoint_round_trip_then_patch(tmp_path):
    tuned = _trained_copy(_build())
    tuned.save_adapter(tmp_path)
    loaded = adaptvid.load_model(tmp_path).eval()
    video = tiny_video()
    with torch.no_grad():
        assert torch.equal(loaded(video), tuned(video))
        # the loaded model kept the original CLIP weights it was rebuilt from: patching needs nothing else
        assert torch.equal(patch_weights(loaded, ratio=0.5)(video), patch_weights(copy.deepcopy(tuned), ratio=0.5)(video))


def test_iwo_gradient_is_the_loss_gradient_at_the_interpolated_weights():
    tuned = _trained_copy(_build()).train()
    video, labels = tiny_video(), torch.tensor([0, 2])
    a = random.Random(7).uniform(0.0, 0.6)
    loss = iwo_loss(tuned, video, labels, rng=random.Random(7))
    loss.backward()
    # Reference: load a*original + (1-a)*tuned into a copy and differentiate there (the official two-pass loop).
    reference = copy.deepcopy(tuned)
    reference.zero_grad()
    original = tuned.open_vclip_original.state()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if p.requires_grad:
                p.copy_(torch.lerp(dict(tuned.named_parameters())[name], original[name], a))
    expected = 0.5 * F.cross_entropy(reference(video), labels)
    expected.backward()
    assert torch.allclose(loss, expected, atol=1e-6)
    for (name, p), q in zip(tuned.named_parameters(), reference.parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name


def test_flops_overhead_is_the_tripled_attention_on_vit_b16():
    from adaptvid.model.profile import profile_model

    model = adaptvid.build_model("clip", "open-vclip", class_names=["a"], weights="random",
                                 keep_original_weights=False, ovc_iwo_weight=0).to("meta")
    result = profile_model(model)
    tokens, width, depth, frames = 197, 768, 12, 8
    # q @ k^T and attn @ v see 3L keys instead of L: 2 x (2 matmuls x 2 L^2 D FLOPs) more per block and frame
    extra = 2 * (2 * 2 * tokens * tokens * width) * depth * frames / 1e9
    assert result["gflops_per_view"] == pytest.approx(result["gflops_bare_per_view"] + extra, rel=1e-4)
    assert result["flops_ratio"] == pytest.approx(1.0815, abs=1e-3)


def test_adapt_adds_the_iwo_regulariser_to_the_training_loss(tmp_path):
    """The trainer calls every model.extra_losses entry once per step with the training batch."""
    from adaptvid.train import TrainConfig, fit

    model = _build("tiny-clip")
    assert [f.func.__name__ for f in model.extra_losses] == ["iwo_loss"] and model.extra_losses[0].keywords == {"weight": 0.5}
    calls, iwo = [], model.extra_losses[0]

    def counting(m, video, labels):
        calls.append(video.shape[0])
        return iwo(m, video, labels)

    model.extra_losses[:] = [counting]
    videos = [(tiny_video(batch=1, frames=4)[0], i % 3) for i in range(4)]

    class Clips(torch.utils.data.Dataset):
        def __len__(self):
            return len(videos)

        def __getitem__(self, i):
            return {"video": videos[i][0], "label": videos[i][1], "index": i}

    fit(model, Clips(), None, TrainConfig(epochs=1, batch_size=2, num_workers=0, progress=False, clip_grad=None),
        tmp_path / "run")
    assert calls == [2, 2]
    assert not adaptvid.build_model("tiny-clip", "open-vclip", class_names=CLASSES, num_frames=4,
                                    ovc_iwo_weight=0.0).extra_losses
