"""ZeroI2V: STDHA channel shift, linear adapters, temporal embedding, and merging into the frozen weights."""
import json

import pytest
import torch

import adaptvid
from adaptvid import build_model, count_parameters
from adaptvid.methods.zeroi2v import (fold_after, linear_adapter, fold_before, shift_heads, temporal_shift)
from conftest import TINY_BACKBONES, tiny_video, check_one_training_step

FRAMES = 4


def _build(backbone, **options):
    return build_model(backbone, "zeroi2v", num_classes=5, num_frames=options.pop("num_frames", FRAMES), **options)


def _randomise_adapters(model, std=0.1):
    """The up-projections start at zero (identity adapters); give every new tensor some value."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "zeroi2v" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def _plain_tower_size(backbone):
    return count_parameters(build_model(backbone, "frozen", num_classes=None))[1]


# -- STDHA ---------------------------------------------------------------------------------

def test_temporal_shift_moves_channel_groups_one_frame_and_clones_the_ends():
    b, t, length, c, fold = 2, 5, 3, 12, 2
    # value = 10000 * clip + 100 * frame + channel: every entry says where it came from
    clip = torch.arange(b).view(b, 1, 1, 1) * 10000
    frame = torch.arange(t).view(1, t, 1, 1) * 100
    channel = torch.arange(c).view(1, 1, 1, c)
    x = (clip + frame + channel).expand(b, t, length, c).reshape(b * t, length, c)
    out = temporal_shift(x, t, fold).reshape(b, t, length, c)
    x = x.reshape(b, t, length, c)
    for f in range(t):
        back, ahead = max(f - 1, 0), min(f + 1, t - 1)
        assert torch.equal(out[:, f, :, :fold], x[:, back, :, :fold]), f
        assert torch.equal(out[:, f, :, fold:2 * fold], x[:, ahead, :, fold:2 * fold]), f
        assert torch.equal(out[:, f, :, 2 * fold:], x[:, f, :, 2 * fold:]), f
    # clips never mix
    assert torch.equal(out[1] - out[0], torch.full_like(out[0], 10000))
    # one frame, or no fold: nothing moves
    assert torch.equal(temporal_shift(x.reshape(b * t, length, c), 1, fold), x.reshape(b * t, length, c))
    assert torch.equal(temporal_shift(x.reshape(b * t, length, c), t, 0), x.reshape(b * t, length, c))


def test_shift_heads_acts_on_packed_head_major_channels():
    n, heads, length, dim = 2 * 3, 4, 5, 6
    x = torch.randn(n, heads, length, dim)
    packed = x.transpose(1, 2).reshape(n, length, heads * dim)
    expected = temporal_shift(packed, 3, 6).reshape(n, length, heads, dim).transpose(1, 2)
    out = shift_heads(x, 3, 6)
    assert torch.equal(out, expected)
    # fold == head_dim: head 0 comes from t-1 and head 1 from t+1, exactly; the others stay
    v = x.reshape(2, 3, heads, length, dim)
    o = out.reshape(2, 3, heads, length, dim)
    assert torch.equal(o[:, 1:, 0], v[:, :-1, 0]) and torch.equal(o[:, 0, 0], v[:, 0, 0])
    assert torch.equal(o[:, :-1, 1], v[:, 1:, 1]) and torch.equal(o[:, -1, 1], v[:, -1, 1])
    assert torch.equal(o[:, :, 2:], v[:, :, 2:])


# -- the adapted model ---------------------------------------------------------------------

@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_shapes_gradients_and_frozen_weights(backbone):
    model = _build(backbone)
    video = tiny_video(frames=FRAMES)
    assert model(video).shape == (2, 5)
    assert model.encode_video(video).shape == (2, model.backbone.width)  # normed CLS, no projection

    _randomise_adapters(model, std=0.02)  # zero up-projections would stop the down-projections' gradients
    check_one_training_step(model, video, torch.tensor([1, 3]))

    # What trains: the adapters, the temporal embedding, the final norm (ln_post), the head; nothing else.
    tower = {id(p): n for n, p in model.backbone.tower.named_parameters()}
    in_tower = sorted(n for n, p in model.backbone.tower.named_parameters() if p.requires_grad)
    final_norm = {"tiny-clip": "ln_post", "tiny-hf-clip": "post_layernorm", "tiny-vit": "norm."}[backbone]
    assert in_tower and all(final_norm in n for n in in_tower), in_tower
    names = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in tower]
    assert all("zeroi2v" in n or n.startswith("head.") for n in names), names


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_identity_at_init_once_the_shift_is_off(backbone):
    video = tiny_video(frames=FRAMES)
    frozen = build_model(backbone, "frozen", num_classes=5, num_frames=FRAMES, pool="embed-mean", project=False).eval()
    with torch.no_grad():
        reference = frozen.encode_video(video)
        no_shift = _build(backbone, shift_div=0).eval().encode_video(video)
        shifted = _build(backbone).eval().encode_video(video)
    # Zero-init up-projections and temporal embedding: without the shift, exactly the image model
    # (to float rounding: the attention runs through SDPA rather than the library's kernel).
    torch.testing.assert_close(no_shift, reference, rtol=0, atol=1e-5)
    # STDHA changes the attention from the first step: not the image model, even at init.
    assert not torch.allclose(shifted, reference, atol=1e-3)
    # ... except on a single frame, where there is nothing to shift.
    one = video[:, :, :1]
    with torch.no_grad():
        single = _build(backbone, num_frames=1).eval().encode_video(one)
        torch.testing.assert_close(single, frozen.encode_video(one), rtol=0, atol=1e-5)


def test_the_shift_makes_the_model_see_frame_order():
    model = _build("tiny-clip").eval()
    frozen = build_model("tiny-clip", "frozen", num_classes=5, num_frames=FRAMES).eval()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        assert not torch.allclose(model.encode_video(video), model.encode_video(video.flip(2)), atol=1e-4)
        torch.testing.assert_close(frozen.encode_video(video), frozen.encode_video(video.flip(2)))


def test_adapter_is_the_identity_at_init_and_its_affine_map_is_exact():
    adapter = linear_adapter(8, 2, scale=0.5, dropout=0.1)
    x = torch.randn(3, 8)
    assert torch.equal(adapter(x), x)
    assert torch.equal(adapter.up.weight, torch.zeros(8, 2)) and torch.equal(adapter.up.bias, torch.zeros(8))
    assert adapter.down.weight.abs().max() <= 0.04 + 1e-6  # trunc-normal(0.02) clipped at +-2 (absolute)
    torch.nn.init.normal_(adapter.up.weight)
    torch.nn.init.normal_(adapter.up.bias)
    adapter.eval()
    A, a = adapter.affine()
    torch.testing.assert_close(adapter(x).double(), x.double() @ A.T + a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_helpers_on_linears_and_on_raw_parameter_pairs(bias):
    linear = torch.nn.Linear(6, 4, bias=bias, dtype=torch.float64)
    A_in, a_in = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    A_out, a_out = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = linear(x @ A_in.T + a_in) @ A_out.T + a_out
    fold_before(linear, A_in, a_in)
    fold_after(linear, A_out, a_out)
    assert linear.bias is not None and linear.bias.requires_grad == bias  # a bias-free linear gains a frozen one
    with torch.no_grad():
        torch.testing.assert_close(linear(x), expected)

    mha = torch.nn.MultiheadAttention(6, 2, batch_first=True)
    W = mha.in_proj_weight.detach().clone()
    b = mha.in_proj_bias.detach().clone()
    fold_before(mha, A_in, a_in, weight="in_proj_weight", bias="in_proj_bias")
    torch.testing.assert_close(mha.in_proj_weight.detach().double(), W.double() @ A_in, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mha.in_proj_bias.detach().double(), W.double() @ a_in + b.double(), rtol=1e-5, atol=1e-5)


# -- merging ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_merge_folds_the_adapters_into_the_frozen_weights(backbone):
    model = _randomise_adapters(_build(backbone)).eval()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        before = model(video)
    adaptvid.merge(model)
    with torch.no_grad():
        after = model(video)
    diff = (after - before).abs().max().item()
    print(f"{backbone}: merged vs unmerged max abs diff {diff:.2e}")
    assert diff <= 1e-5
    assert model.merged_methods == ["zeroi2v"]

    # The plain tower + the temporal embedding (T x D) + the head: no adapter is left.
    width = model.backbone.width
    head = width * 5 + 5
    assert count_parameters(model)[1] == _plain_tower_size(backbone) + FRAMES * width + head
    for slot in model.backbone.slots:
        assert len(slot.mlp_in) == 0 and len(slot.mlp_out) == 0
        stdha = slot.attention["zeroi2v"]  # the shift stays, with no parameters
        assert stdha.t_adapter is None and stdha.s_adapter is None and not list(stdha.parameters())
    with pytest.raises(ValueError, match="can be merged"):
        adaptvid.merge(model)  # nothing left to merge


def test_merge_without_the_shift_gives_back_the_library_blocks():
    model = _randomise_adapters(_build("tiny-vit", shift_div=0)).eval()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        before = model(video)
        adaptvid.merge(model)
        after = model(video)
    assert all(slot.is_empty() for slot in model.backbone.slots)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_a_merged_model_saves_and_loads(tmp_path):
    model = _randomise_adapters(_build("tiny-hf-clip")).eval()
    with torch.no_grad():
        model.backbone.tower.vision_model.post_layernorm.weight.add_(0.1)  # a "trained" final norm
    adaptvid.merge(model)
    model.save_adapter(tmp_path / "merged", class_names=list("abcde"))
    config = json.loads((tmp_path / "merged" / "adaptvid.json").read_text())
    assert config["merged"] == ["zeroi2v"]
    loaded = adaptvid.load_model(tmp_path / "merged").eval()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))


def test_merge_refuses_a_model_with_nothing_mergeable():
    model = build_model("tiny-clip", "st-adapter", num_classes=5, num_frames=FRAMES, bottleneck=8)
    with pytest.raises(ValueError, match=r"none of the model's methods \(st-adapter\) can be merged"):
        adaptvid.merge(model)


# -- options, errors, paper count ------------------------------------------------------------

def test_options_are_checked():
    with pytest.raises(ValueError, match="shift_div must be 0"):
        _build("tiny-vit", shift_div=1)
    with pytest.raises(ValueError, match="shifts no channel"):
        _build("tiny-vit", shift_div=65)
    with pytest.raises(ValueError, match="bottleneck_ratio"):
        _build("tiny-vit", bottleneck_ratio=0)
    model = _build("tiny-vit")
    with pytest.raises(ValueError, match="built for 4 frames"):
        model(tiny_video(frames=2))
    small = _build("tiny-vit", bottleneck_ratio=0.5, shift_div=0)
    adapter = small.backbone.slots[0].mlp_in["zeroi2v"]
    assert adapter.down.out_features == 32 and small.backbone.slots[0].attention["zeroi2v"].fold == 0


def test_vit_b16_parameter_count_matches_the_official_code():
    model = build_model("clip", "zeroi2v", num_classes=400, weights="random")
    trainable, total = count_parameters(model)
    head = 768 * 400 + 400  # I3D head on the normed CLS (width 768), no CLIP projection
    expected = 14_209_536   # 48 adapters (768-192-768) + temporal embedding 8x768 + ln_post
    print(f"ViT-B/16 zeroi2v trainable excl. head: {trainable - head:,} (official {expected:,})")
    assert abs((trainable - head) - expected) / expected < 0.02
    assert trainable - head == expected
    assert total - (trainable - head) - head == 86_192_640 - 2 * 768  # the rest of the CLIP B/16 tower, frozen
    adaptvid.merge(model)
    assert count_parameters(model)[1] == 86_192_640 + 8 * 768 + head


# -- recipes -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=3, videos_per_class_val=2, num_frames=16)
    return root


@pytest.mark.parametrize("recipe", ["zeroi2v/k400-vit-b16-8f", "zeroi2v/ssv2-vit-b16-8f"])
def test_published_recipes_run_a_smoke_step_on_a_tiny_backbone(recipe, demo, tmp_path):
    from adaptvid.cli import main

    out = tmp_path / "o"
    assert main(["adapt", "--recipe", recipe, "--demo", "--demo-dir", str(demo), "--output", str(out),
                 "--set", "backbone=tiny-clip", "--set", "weights=null", "--set", "train.precision=no",
                 "--set", "train.batch_size=4", "--epochs", "1", "--num-workers", "0", "--no-progress"]) == 0
    config = json.loads((out / "adaptvid.json").read_text())
    method = config["methods"][0]
    assert method["name"] == "zeroi2v" and method["config"]["shift_div"] == 12
    assert method["config"]["adapter_scale"] == (0.5 if "k400" in recipe else 1.0)
    assert config["pool"] == "embed-mean" and config["project"] is False and config["head_dropout"] == 0.5
    # the trained checkpoint reloads, and merges to the same outputs
    model = adaptvid.load_model(out).eval()
    video = tiny_video(frames=8)
    with torch.no_grad():
        before = model(video)
        after = adaptvid.merge(model)(video)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
