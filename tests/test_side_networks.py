"""Side networks beside a frozen tower: Side4Video (a decoder over every block) and DiST (a video encoder)."""
import pytest
import torch

from adaptvid import build_model, count_parameters
from adaptvid.methods._blocks import TokenBatchNorm
from adaptvid.methods.side4video import shift_cls
from conftest import TINY_BACKBONES, check_batchnorm_checkpoint_round_trip, check_one_training_step, tiny_video

# Narrow widths keep the tiny models fast; the defaults are checked on ViT-B/16 below.
SMALL = {"side4video": dict(side_width=32, side_head_dim=16),
         "dist": dict(temporal_width=8, integration_width=32)}
FRAMES = {"side4video": 4, "dist": 8}     # DiST clips hold 2T frames: the tower sees 4 of these 8


def _build(method, backbone="tiny-clip", **options):
    return build_model(backbone, method, num_classes=5, num_frames=FRAMES[method], **{**SMALL[method], **options})


def _randomise(module):
    """Non-zero values in every trained tensor, as after training."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.2)


def _check_only_new_modules_train(model, video, prefix):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith((prefix, "head.")) for n in trainable)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    check_one_training_step(model, video, torch.tensor([1, 3]), all_trainable_move=False, nonzero_grads=False)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_side4video_reads_every_block_without_autograd_and_only_the_side_network_trains(backbone):
    model = _build("side4video", backbone)
    assert model.decoder.layers == [0, 1] and model.embed_dim == model.decoder.out_dim == 32
    assert model.cacheable() and not model._backbone_needs_grad()
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, args: seen.extend(args[0]))
    video = tiny_video()
    assert model(video).shape == (2, 5) and model.encode_video(video).shape == (2, 32)
    assert len(seen) == 4 and all(t.shape == (8, 17, 64) and not t.requires_grad for t in seen)
    _check_only_new_modules_train(model, video, "decoder.")


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_dist_runs_the_tower_on_every_other_frame_without_autograd(backbone):
    model = _build("dist", backbone)
    assert not model.cacheable() and model.embed_dim == 32
    calls, spatial = [], []
    run = model.backbone.forward_tokens

    def spy(images, ctx, **kwargs):
        calls.append((images.clone(), ctx, torch.is_grad_enabled()))
        return run(images, ctx, **kwargs)

    model.backbone.forward_tokens = spy
    for layer in model.video_encoder.integration:
        layer.spatial_norm.register_forward_pre_hook(lambda module, args: spatial.append(args[0]))
    video = tiny_video(frames=8)
    assert model(video).shape == (2, 5)
    (images, ctx, grad), = calls
    assert ctx.num_frames == 4 and ctx.tag == "dist-spatial" and not grad
    sparse = video[:, :, ::2].transpose(1, 2).reshape(8, 3, 64, 64)   # frames 0, 2, 4, 6 of each clip
    assert torch.equal(images, sparse)
    assert len(spatial) == 2 and all(t.shape == (2, 4, 17, 64) and not t.requires_grad for t in spatial)
    _check_only_new_modules_train(model, video, "video_encoder.")


@pytest.mark.parametrize("method", ["side4video", "dist"])
def test_frame_order_matters(method):
    model = _build(method).eval()
    _randomise(model.decoder if method == "side4video" else model.video_encoder)
    video = tiny_video(frames=FRAMES[method])
    with torch.no_grad():
        forward, backward = model.encode_video(video), model.encode_video(video.flip(2))
    assert not torch.allclose(forward, backward, atol=1e-4)


def test_cls_shift_takes_half_the_channels_from_each_neighbour():
    cls = torch.arange(1.0, 4.0)[None, :, None, None].expand(1, 3, 1, 4)   # frame t holds t+1 in every channel
    shifted = shift_cls(cls)[0, :, 0]
    assert shifted.tolist() == [[2, 2, 0, 0], [3, 3, 1, 1], [0, 0, 2, 2]]


def test_side4video_trains_from_cached_features_with_the_live_logits(demo, tmp_path):
    from adaptvid.data import VideoDataset, VideoTransform, read_list_file
    from adaptvid.train.feature_cache import cached_dataset

    model = build_model("tiny-clip", "side4video", num_classes=6, num_frames=4, **SMALL["side4video"]).eval()
    _randomise(model.decoder)
    video = tiny_video()
    with torch.no_grad():
        features = model.backbone_features(video)
        assert features.shape == (2, 2, 4, 17, 64)                       # (B, every block, T, L, D)
        live = model(video)
        model.from_features = True
        assert torch.equal(model(features), live)
    model.from_features = False

    pp = model.backbone.preprocess
    dataset = VideoDataset(read_list_file(demo / "val.txt"), num_frames=4, train=False,
                           transform=VideoTransform(pp.image_size, pp.mean, pp.std, train=False))
    cached = cached_dataset(model, dataset, tmp_path, "val", batch_size=4, num_workers=0)
    item = cached[3]
    with torch.no_grad():
        live = model(dataset[item["index"]]["video"][None])
        model.from_features = True
        from_cache = model(item["video"][None])
    torch.testing.assert_close(from_cache, live, rtol=0, atol=2e-2)     # features stored in fp16


def test_dist_cannot_use_the_cache(demo, tmp_path):
    from adaptvid.data import VideoDataset, read_list_file
    from adaptvid.train.feature_cache import cached_dataset

    model = _build("dist")
    with pytest.raises(ValueError, match="frozen and untouched"):
        cached_dataset(model, VideoDataset(read_list_file(demo / "val.txt"), num_frames=8), tmp_path, "val")


def test_options_and_limits():
    with pytest.raises(ValueError, match="multiple of side_head_dim"):
        _build("side4video", side_width=40, side_head_dim=16)
    with pytest.raises(ValueError, match="even"):
        _build("side4video", side_width=33, side_head_dim=33)
    with pytest.raises(ValueError, match="num_frames a multiple of 2"):
        build_model("tiny-clip", "dist", num_classes=5, num_frames=7)
    with pytest.raises(ValueError, match="got 6 frames; use a multiple of 4"):
        _build("dist", frame_ratio=4)(tiny_video(frames=6))
    with pytest.raises(ValueError, match="both claim"):
        build_model("tiny-clip", "side4video,dist")
    block = _build("side4video", mlp_ratio=2.0, kernel_t=5).decoder.blocks[0]
    assert block.fc1.out_features == 64 and block.dw.kernel_size == (5,) and block.num_heads == 2
    encoder = _build("dist", kernel_t=5, integration_conv_ratio=0.5).video_encoder
    assert encoder.temporal.patch_embed.kernel_size == (5, 16, 16) and encoder.integration[0].down.out_features == 16


@pytest.mark.parametrize("method", ["side4video", "dist"])
def test_checkpoint_round_trip(method, tmp_path):
    from adaptvid.checkpoints import load_model

    model = _build(method).eval()
    _randomise(model.decoder if method == "side4video" else model.video_encoder)
    model.save_adapter(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    video = tiny_video(frames=FRAMES[method])
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=0)


def test_token_batchnorm_is_batchnorm3d_over_the_channels_of_the_token_layout():
    torch.manual_seed(0)
    b, t, h, w, c = 2, 3, 2, 4, 6
    tokens, bn3d = TokenBatchNorm(c), torch.nn.BatchNorm3d(c)
    with torch.no_grad():
        tokens.weight.normal_()
        tokens.bias.normal_()
    bn3d.load_state_dict(tokens.state_dict())
    channels_first = lambda z: z.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)   # noqa: E731
    for _ in range(2):                  # train mode: batch statistics, the running ones updated alike
        x = 3 * torch.randn(b, t, h * w, c) + 1
        torch.testing.assert_close(channels_first(tokens(x)), bn3d(channels_first(x)))
    for name, buffer in bn3d.state_dict().items():
        torch.testing.assert_close(tokens.state_dict()[name], buffer)
    assert tokens.num_batches_tracked == 2 and tokens.running_mean.any()
    tokens.eval(), bn3d.eval()
    x = torch.randn(b * t, h * w, c)    # eval mode, the (B*T, N, C) layout: the running statistics
    torch.testing.assert_close(tokens(x).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3),
                               bn3d(x.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)))
    with pytest.raises(ValueError, match="expected 6 channels last"):
        tokens(torch.randn(2, 6, 5))


def test_side4video_norms_follow_the_official_placement():
    decoder = _build("side4video").decoder
    batch_norms = [decoder.norm] + [n for block in decoder.blocks for n in (block.conv_norm, block.mlp_norm)]
    for norm in batch_norms:            # the official BatchNorm3d: before the temporal conv, before the MLP, final
        assert isinstance(norm, TokenBatchNorm) and norm.num_features == 32
        assert torch.equal(norm.weight, torch.ones(32)) and not norm.bias.any()
    layer_norms = [block.attn_norm for block in decoder.blocks] + list(decoder.fuse_norms)
    assert all(type(norm) is torch.nn.LayerNorm for norm in layer_norms)   # before the attention; the fusion


def test_side4video_checkpoint_restores_the_batchnorm_statistics_after_training(tmp_path):
    model = _build("side4video")
    check_batchnorm_checkpoint_round_trip(model, TokenBatchNorm, 2 * model.backbone.depth + 1, tmp_path)


def test_vit_b16_parameter_counts():
    d, depth, grid = 768, 12, 14 * 14
    ln = lambda w: 2 * w                                                  # noqa: E731
    bn = ln                                                               # BatchNorm affine: also 2C
    lin = lambda i, o: i * o + o                                          # noqa: E731

    model = build_model("clip", "side4video", num_classes=400, weights="random")
    trainable, total = count_parameters(model)
    c = 320
    block = (bn(c) + 2 * lin(c, c) + 3 * c + c                            # temporal conv: BN, pw, dw 3x1x1, pw
             + ln(c) + lin(c, c) + lin(c, 2 * c) + lin(c, c)              # attention: LayerNorm, q, kv, out
             + bn(c) + lin(c, 4 * c) + lin(4 * c, c))                     # MLP: BN, fc1, fc2
    side = depth * (ln(d) + lin(d, c) + block) + grid * c + bn(c)         # + fusion per block, position table, BN
    print(f"Side4Video ViT-B/16 trainable parameters excluding the head Linear: {trainable - lin(c, 400):,}")
    assert trainable - lin(c, 400) == side == 20_318_592
    assert total - trainable == 86_192_640                                # the untouched CLIP ViT-B/16 tower

    model = build_model("clip", "dist", num_classes=400, weights="random", num_frames=16)
    trainable, total = count_parameters(model)
    ct, ci = 96, 384
    temporal = (3 * 3 * 16 * 16 * ct + ct + ln(ct)                        # patchify 3x16x16 and its norm
                + depth * (ln(ct) + 3 * ct + ct + ln(ct) + lin(ct, ct) + lin(ct, ct)))
    integration = depth * (ln(d) + lin(d, ci) + ln(ct) + lin(ct, ci)      # spatial and temporal projections
                           + ln(ci) + lin(ci, 96) + 3 * 96 + 96 + lin(96, ci)   # temporal-conv bottleneck
                           + ln(ci) + lin(ci, ci) + lin(ci, ci)) + ln(ci)       # MLP; final norm
    print(f"DiST ViT-B/16 trainable parameters excluding the head Linear: {trainable - lin(ci, 400):,}")
    assert trainable - lin(ci, 400) == temporal + integration == 8_927_904
    assert total - trainable == 86_192_640


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("side-demo")
    make_demo_data(root, videos_per_class_train=3, videos_per_class_val=2, num_frames=16)
    return root


@pytest.mark.parametrize("name, frames, count", [("side4video/k400-vit-b16-8f", 8, 20_318_592),
                                                 ("dist/k400-vit-b16-8f", 16, 8_927_904)])
def test_recipe_runs(name, frames, count, demo, tmp_path):
    from adaptvid.cli import main
    from adaptvid.runner.recipes import load_recipe

    recipe = load_recipe(name)
    assert recipe["paper"]["top1"] == 83.6 and recipe["paper"]["trainable_params_excl_head"] == count
    assert recipe["model"]["frames"] == frames
    assert main(["adapt", "--recipe", name, "--demo", "--demo-dir", str(demo),
                 "--output", str(tmp_path / "o"), "--set", "backbone=tiny-clip", "--set", "weights=null",
                 "--set", "train.precision=no", "--set", "train.batch_size=4", "--epochs", "1",
                 "--num-workers", "0", "--no-progress"]) == 0
    assert (tmp_path / "o" / "adapter.safetensors").is_file()
