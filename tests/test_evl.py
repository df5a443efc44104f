"""EVL: a decoder over the frozen backbone's last layers, with local temporal modules."""
import pytest
import torch

from adaptvid import build_model, count_parameters
from adaptvid.backbones import FrameContext
from adaptvid.methods.evl import TemporalCrossAttention
from conftest import TINY_BACKBONES, check_one_training_step, tiny_video


def _build(backbone="tiny-clip", **options):
    return build_model(backbone, "evl", num_classes=5, num_frames=4, **options)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_shapes_and_only_the_decoder_and_head_train(backbone):
    model = _build(backbone)
    assert model.decoder.layers == [0, 1]          # depth 2: one decoder layer + the block before it
    assert not model._backbone_needs_grad()
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, args: seen.extend(args[0]))
    video = tiny_video()
    logits = model(video)
    assert logits.shape == (2, 5) and model.encode_video(video).shape == (2, 64)
    # two calls x (2 block outputs + their 2 queries + 2 keys, heads merged)
    assert len(seen) == 12 and all(t.shape == (8, 17, 64) and not t.requires_grad for t in seen)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("decoder.", "head.")) for n in trainable)
    check_one_training_step(model, video, torch.tensor([1, 3]), all_trainable_move=False, nonzero_grads=False)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_features_can_be_cached():
    model = _build().eval()
    assert model.cacheable()                       # nothing inside the tower: features computed once
    video = tiny_video()
    with torch.no_grad():
        features = model.backbone_features(video)
        assert features.shape == (2, 6, 4, 17, 64)   # (B, outputs + queries + keys of blocks 0 and 1, T, L, D)
        live = model(video)
        model.from_features = True
        assert torch.equal(model(features), live)


def _naive_feature(q, k, w_prev, w_next, grid, prefix):
    """Direct sums over (frame, query patch, key patch) with explicit 2-D offsets."""
    h, w = grid
    bt, heads, length, hd = q.shape
    t_len = 3
    q, k = q.reshape(-1, t_len, heads, length, hd), k.reshape(-1, t_len, heads, length, hd)
    out = torch.zeros(q.shape[0], t_len, length, w_prev.shape[1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for t in range(t_len):
            for other, table in ((t - 1, w_prev), (t + 1, w_next)):
                if not 0 <= other < t_len:
                    continue
                logits = q[b, t, :, prefix:] @ k[b, other, :, prefix:].transpose(-1, -2) / hd ** 0.5
                affinity = logits.softmax(-1).mean(0)                       # (Np, Np)
                for qi in range(h * w):
                    for ki in range(h * w):
                        row = qi // w - ki // w + h - 1
                        col = qi % w - ki % w + w - 1
                        out[b, t, prefix + qi] += affinity[qi, ki] * table[row * (2 * w - 1) + col]
    return out


def test_temporal_cross_attention_is_zero_at_init_and_a_relative_position_sum():
    grid, prefix, dim = (2, 3), 1, 8                  # non-square grid: rows and columns cannot be swapped
    ctx = FrameContext(num_frames=3, grid=grid, num_prefix_tokens=prefix)
    module = TemporalCrossAttention(dim, grid).double()
    assert module.w_prev.shape == module.w_next.shape == (3 * 5, dim)
    q = torch.randn(2 * 3, 2, prefix + 6, 4, dtype=torch.float64)
    k = torch.randn(2 * 3, 2, prefix + 6, 4, dtype=torch.float64)
    feature = module(q, k, ctx)
    assert feature.shape == (2, 3, prefix + 6, dim)
    assert torch.equal(feature, torch.zeros_like(feature))

    with torch.no_grad():
        module.w_prev.normal_()
        module.w_next.normal_()
    feature = module(q, k, ctx)
    assert feature.abs().sum() > 0
    assert torch.equal(feature[:, :, :prefix], torch.zeros_like(feature[:, :, :prefix]))
    torch.testing.assert_close(feature, _naive_feature(q, k, module.w_prev, module.w_next, grid, prefix))


def test_frame_order_matters_once_the_temporal_modules_are_nonzero():
    video = tiny_video()

    def sees_order(model):
        model.eval()
        with torch.no_grad():
            return not torch.allclose(model.encode_video(video), model.encode_video(video.flip(2)), atol=1e-5)

    blind = _build(temporal_conv=False)
    assert not sees_order(blind), "zero tables and position embeddings, no conv: order-invariant"
    for part in ("w_prev", "w_next"):
        model = _build(temporal_conv=False)
        torch.nn.init.normal_(getattr(model.decoder.temporal_cross_attention[0], part))
        assert sees_order(model), f"a non-zero {part} table should see the frame order"
    model = _build(temporal_conv=False)
    torch.nn.init.normal_(model.decoder.temporal_pos_embedding[0])
    assert sees_order(model)
    assert sees_order(_build(temporal_cross_attention=False, temporal_pos=False))   # conv, default init


def test_options_and_limits():
    assert _build(num_layers=4).decoder.num_layers == 2                 # capped at the depth on 2 blocks
    bare = _build(temporal_conv=False, temporal_pos=False, temporal_cross_attention=False).decoder
    assert bare.temporal_conv is None and bare.temporal_pos_embedding is None and bare.temporal_cross_attention is None
    assert _build(mlp_dropout=0.1).decoder.blocks[0].mlp.dropout.p == 0.1
    with pytest.raises(ValueError, match="num_layers"):
        _build(num_layers=0)
    with pytest.raises(ValueError, match="built for 4 frames"):
        _build()(tiny_video(frames=3))
    with pytest.raises(ValueError, match="already has a decoder"):
        build_model("tiny-vit", "evl", num_classes=2).set_decoder(torch.nn.Identity())


def test_checkpoint_round_trip(tmp_path):
    from adaptvid.checkpoints import load_model

    model = _build().eval()
    for p in model.decoder.parameters():
        torch.nn.init.normal_(p, std=0.1)
    model.save_adapter(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    video = tiny_video()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=0)


def test_vit_b16_parameter_count_matches_the_official_code():
    model = build_model("clip", "evl", num_classes=400, weights="random")
    assert model.decoder.layers == model.decoder.qk_layers == [8, 9, 10, 11]
    trainable, total = count_parameters(model)
    head = 768 * 400 + 400
    print(f"EVL ViT-B/16 trainable parameters excluding the head Linear: {trainable - head:,}")
    expected = 32_875_776
    assert abs((trainable - head) - expected) / expected < 0.02
    # 4 x (attn 4*768^2+4*768, MLP 768*3072*2+3072+768, 3 LayerNorms) + 4 x conv (768*3+768)
    # + 4 x pos (8*768) + 4 x 2 tables (729*768) + query token 768 + final LayerNorm 1536
    assert trainable - head == expected
    assert total - trainable == 86_192_640                             # the untouched CLIP ViT-B/16 tower
    tables = sum(p.numel() for n, p in model.named_parameters() if ".w_prev" in n or ".w_next" in n)
    assert tables == 4 * 2 * 729 * 768 and expected - tables == 28_396_800


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("evl-demo")
    make_demo_data(root, videos_per_class_train=3, videos_per_class_val=2, num_frames=16)
    return root


def test_recipe_runs(demo, tmp_path):
    from adaptvid.cli import main
    from adaptvid.runner.recipes import load_recipe

    recipe = load_recipe("evl/k400-vit-b16-8f")
    assert recipe["paper"]["trainable_params_excl_head"] == 32_875_776
    assert main(["adapt", "--recipe", "evl/k400-vit-b16-8f", "--demo", "--demo-dir", str(demo),
                 "--output", str(tmp_path / "o"), "--set", "backbone=tiny-clip", "--set", "weights=null",
                 "--set", "train.precision=no", "--set", "train.batch_size=4", "--epochs", "1",
                 "--num-workers", "0", "--no-progress"]) == 0
    assert (tmp_path / "o" / "adapter.safetensors").is_file()
