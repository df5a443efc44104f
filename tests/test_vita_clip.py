"""Vita-CLIP: the official token plumbing re-implemented by hand, parameter counts on ViT-B/16, training."""
import math

import pytest
import torch

from safetensors.torch import load_file, save_file
from torch import nn

from adaptvid import build_model, count_parameters, load_model
from adaptvid.checkpoints import WEIGHTS_FILE
from adaptvid.methods.vita_clip import FrameAttention, FrozenLinear, VitaClassifier
from adaptvid.model.profile import profile_model
from conftest import check_one_training_step, fixed_batch_losses, tiny_video

CLASSES = ["square growing", "disc fading", "red turning blue"]
FRAMES = 4
K400 = [f"action number {i}" for i in range(400)]
TEXT_CTX_400 = 400 * 8 * 512


def _official_block(block, tokens, x, frames):
    """One official VitaCLIP layer with the encoder's global-prompt handling around it, on open_clip modules:
    [CLS, local(T), global(8), patches, summary] for attention; local and summary removed before the MLP,
    the global prompts after it."""
    n, _, width = x.shape
    videos, glob = n // frames, tokens.global_prompts.shape[0]
    x = torch.cat([x[:, :1], tokens.global_prompts.expand(n, -1, -1), x[:, 1:]], dim=1)
    cls = tokens.cls_proj(x[:, 0].reshape(videos, frames, width))
    summary = cls + tokens.summary_attn(tokens.summary_ln(cls))
    x = torch.cat([x, summary.reshape(n, 1, width)], dim=1)
    local = (tokens.local_prompts + cls).repeat_interleave(frames, dim=0)
    x = torch.cat([x[:, :1], local, x[:, 1:]], dim=1)
    xn = block.ln_1(x)
    x = x + block.attn(xn, xn, xn, need_weights=False)[0]
    x = x[:, :-1]
    x = torch.cat([x[:, :1], x[:, 1 + frames:]], dim=1)
    x = x + block.mlp(block.ln_2(x))
    return torch.cat([x[:, :1], x[:, 1 + glob:]], dim=1)


def test_video_embedding_equals_the_official_layout_by_hand():
    model = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES).eval()
    bb = model.backbone
    video = tiny_video(frames=FRAMES)
    b, c, t, h, w = video.shape
    with torch.no_grad():
        x = bb.embed_tokens(video.transpose(1, 2).reshape(b * t, c, h, w))
        time_embed = bb.before_pre_norm["vita_clip"].time_embed
        x = (x.reshape(b, t, *x.shape[1:]) + time_embed[None, :, None]).flatten(0, 1)   # every token, before ln_pre
        x = bb.pre_norm(x)
        for block, slot in zip(bb.tower.transformer.resblocks, bb.slots):
            x = _official_block(block, slot.attn_tokens["vita_clip"], x, t)
        expected = bb.head(x[:, 0]).reshape(b, t, -1).mean(dim=1)
        torch.testing.assert_close(model.encode_video(video), expected, rtol=1e-5, atol=1e-6)


def test_frame_attention_is_the_official_einsum_attention():
    torch.manual_seed(0)
    attn = FrameAttention(64, 4)
    for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
        assert torch.equal(linear.bias, torch.zeros(64))
    x = torch.randn(2, 8, 64)
    q, k, v = (p(x).view(2, 8, 4, 16) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    aff = torch.einsum("nqhc,nkhc->nqkh", q / 16 ** 0.5, k).softmax(dim=-2)
    expected = attn.out_proj(torch.einsum("nqlh,nlhc->nqhc", aff, v).flatten(-2))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_extra_tokens_per_frame():
    model = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES)
    tokens = model.backbone.slots[0].attn_tokens["vita_clip"]
    x = torch.randn(2 * FRAMES, 17, 64)
    extra = tokens(x, model.backbone.context(FRAMES))
    assert extra.shape == (2 * FRAMES, 8 + FRAMES + 1, 64)               # global, local (all T frames), summary
    frames = extra.reshape(2, FRAMES, *extra.shape[1:])
    assert torch.equal(frames[:, 0, :8 + FRAMES], frames[:, -1, :8 + FRAMES])   # shared by a video's frames
    assert not torch.equal(frames[:, 0, -1], frames[:, 1, -1])                    # its own summary token
    assert not torch.equal(frames[0, 0, 8:], frames[1, 0, 8:])                   # local prompts follow the CLS


@pytest.mark.parametrize("backbone", ("tiny-clip", "tiny-hf-clip"))
def test_trains_prompts_time_embedding_text_context_and_scale_only(backbone):
    model = build_model(backbone, "vita-clip", class_names=CLASSES, num_frames=FRAMES)
    assert isinstance(model.head, VitaClassifier)
    assert model.head.prompt.ctx.shape == (3, 8, 64) and model.head.prompt.position == "front"
    assert model.head.logit_scale().item() == pytest.approx(math.log(1 / 0.07))
    trainable = {n.split(".")[-1] if "slots" not in n else n.split("vita_clip.")[1]
                 for n, p in model.named_parameters() if p.requires_grad}
    attention = {f"summary_attn.{m}_proj.{w}" for m in ("q", "k", "v", "out") for w in ("weight", "bias")}
    assert trainable == {"time_embed", "global_prompts", "local_prompts", "summary_ln.weight", "summary_ln.bias",
                         "ctx", "learned_logit_scale"} | attention
    assert not any("cls_proj" in n for n, _ in model.named_parameters())   # frozen: buffers, not parameters
    cls_proj = {n: b.clone() for n, b in model.named_buffers() if "cls_proj" in n}
    assert sorted(cls_proj) == [f"backbone.slots.{i}.attn_tokens.vita_clip.cls_proj.{w}"
                                for i in range(2) for w in ("bias", "weight")]
    video, labels = tiny_video(batch=3, frames=FRAMES), torch.tensor([0, 1, 2])
    check_one_training_step(model, video, labels)       # both towers bit-identical after a step
    for name, before in cls_proj.items():
        assert torch.equal(model.get_buffer(name), before), name
    losses = fixed_batch_losses(model, video, labels, steps=10, lr=1e-2)
    assert losses[-1] < losses[0], losses


def test_trained_cls_proj_option():
    model = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES, vita_train_cls_proj=True)
    frozen = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES)
    for slot, frozen_slot in zip(model.backbone.slots, frozen.backbone.slots):
        trained, fixed = slot.attn_tokens["vita_clip"].cls_proj, frozen_slot.attn_tokens["vita_clip"].cls_proj
        assert type(trained) is nn.Linear and trained.weight.requires_grad and trained.bias.requires_grad
        assert isinstance(fixed, FrozenLinear)
        assert torch.equal(trained.weight, fixed.weight) and torch.equal(trained.bias, fixed.bias)  # one seeded draw
    assert not any("cls_proj" in n for n, _ in model.named_buffers())
    check_one_training_step(model, tiny_video(batch=3, frames=FRAMES), torch.tensor([0, 1, 2]))


def test_the_global_rng_draws_the_other_modules_as_before_the_frozen_buffers():
    """Frozen or trained, building cls_proj advances the global RNG alike: one torch.manual_seed gives the
    same prompts and frame attention either way (and as when the frozen projection was an nn.Linear)."""
    models = []
    for trained in (False, True):
        torch.manual_seed(7)
        models.append(build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES,
                                  vita_train_cls_proj=trained))
    frozen, trained = (dict(m.named_parameters()) for m in models)
    assert set(trained) - set(frozen) == {n for n in trained if "cls_proj" in n}
    for name, value in frozen.items():
        assert torch.equal(value, trained[name]), name


def test_checkpoint_round_trip_rebuilds_the_frozen_random_cls_proj(tmp_path):
    model = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES)
    video = tiny_video(batch=3, frames=FRAMES)
    check_one_training_step(model, video, torch.tensor([0, 1, 2]))
    model.eval().save_adapter(tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS_FILE))
    cls_proj = {n: b for n, b in model.named_buffers() if "cls_proj" in n}
    assert len(cls_proj) == 4 and all(torch.equal(saved[n], b) for n, b in cls_proj.items())   # stored
    torch.manual_seed(123)   # the global RNG does not decide the frozen projection
    loaded = load_model(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))


def test_the_checkpoint_s_cls_proj_is_loaded_not_redrawn(tmp_path):
    """Other frozen values (as an imported model holds) come back from the checkpoint, not from the seed."""
    model = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES).eval()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if "cls_proj" in name:
                buffer.copy_(torch.randn_like(buffer))
    model.save_adapter(tmp_path)
    loaded = load_model(tmp_path).eval()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))
        rebuilt = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES).eval()
        rebuilt.load_state_dict({n: p for n, p in model.named_parameters() if p.requires_grad}, strict=False)
        assert not torch.equal(rebuilt(video), model(video))     # the values matter


def test_a_checkpoint_written_before_cls_proj_was_stored_rebuilds_it_from_the_seed(tmp_path):
    """An older adaptvid saved the trainable tensors only: ``adapter.safetensors`` without the cls_proj keys
    (a plain save_adapter folder, no manifest) still loads, and gives the same logits."""
    model = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES)
    video = tiny_video(batch=3, frames=FRAMES)
    check_one_training_step(model, video, torch.tensor([0, 1, 2]))
    model.eval().save_adapter(tmp_path)
    assert not (tmp_path / "checkpoint.json").exists()
    saved = load_file(str(tmp_path / WEIGHTS_FILE))
    old = {n: t for n, t in saved.items() if "cls_proj" not in n}
    assert len(saved) - len(old) == 4 and set(old) == {n for n, p in model.named_parameters() if p.requires_grad}
    save_file(old, str(tmp_path / WEIGHTS_FILE), metadata={"format": "pt"})
    loaded = load_model(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))


def test_other_clip_lengths_resize_the_time_embedding_and_repeat_local_prompts():
    model = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=FRAMES).eval()
    with torch.no_grad():
        assert model(tiny_video(frames=2 * FRAMES)).shape == (2, 3)
        with pytest.raises(ValueError, match="multiple"):
            model(tiny_video(frames=FRAMES + 1))


def test_vita_clip_sets_its_own_classifier():
    with pytest.raises(ValueError, match="vita-clip"):
        build_model("tiny-clip", "vifi-clip,vita-clip", class_names=CLASSES, num_frames=FRAMES)


CLS_PROJ_B16 = 12 * (768 * 768 + 768)   # 7,087,104
FROZEN_B16 = 149_620_737                 # both CLIP towers; the frozen cls_proj is buffers, not counted


@pytest.mark.parametrize("train_cls_proj,expected", [(False, 28_520_449), (True, 28_520_449 + CLS_PROJ_B16)])
def test_parameter_count_on_vit_b16_matches_the_official_code(train_cls_proj, expected):
    model = build_model("clip", "vita-clip", class_names=K400, weights="random", vita_train_cls_proj=train_cls_proj)
    trainable, total = count_parameters(model)
    assert model.head.prompt.ctx.numel() == TEXT_CTX_400
    assert trainable - TEXT_CTX_400 == expected
    assert total - trainable == FROZEN_B16   # totals: 179,779,586 frozen cls_proj, 186,866,690 trained
    assert sum(b.numel() for n, b in model.named_buffers() if "cls_proj" in n) == (0 if train_cls_proj else CLS_PROJ_B16)


def test_flops_overhead_on_vit_b16():
    """Official 1.0626 counts the 8 global prompts through every block's MLP; adaptvid drops them after
    attention (the same values for every other token), which saves exactly 8 tokens' MLP: 1.0368."""
    model = build_model("clip", "vita-clip", class_names=K400, weights="random").to("meta").eval()
    with torch.no_grad():
        model.head.class_embeddings()        # class texts cached, as in evaluation: the video side is compared
    result = profile_model(model)
    mlp_on_globals = 8 * 2 * 2 * 768 * 3072 * 12 * 8 / 281.01566464e9
    assert abs(result["flops_ratio"] - 1.0368) < 0.002, result["flops_ratio"]
    assert abs(result["flops_ratio"] + mlp_on_globals - 1.0626) < 0.002
