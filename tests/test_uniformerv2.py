"""UniFormerV2: local temporal MHRA in the blocks, a global query decoder, the two training regimes."""
import math

import pytest
import torch

from adaptvid import build_model, count_parameters
from adaptvid.backbones import FrameContext
from adaptvid.methods.uniformerv2 import LocalMHRA
from adaptvid.train.schedule import parameter_groups
from conftest import TINY_BACKBONES, check_batchnorm_checkpoint_round_trip, tiny_video


def _build(backbone="tiny-clip", **options):
    return build_model(backbone, "uniformerv2", num_classes=5, num_frames=4, **options)


def _embedding(model, video):
    model.eval()
    with torch.no_grad():
        return model.encode_video(video)


def _head_only(model):
    """Tower tensors only the library readout uses (final norm, projection): never trained here."""
    b = model.backbone
    names = {"tiny-clip": ("ln_post.", "proj"), "tiny-hf-clip": ("vision_model.post_layernorm.", "visual_projection."),
             "tiny-vit": ("norm.",)}[b.name]
    return {n for n, _ in b.tower.named_parameters() if n.startswith(names)}


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("frozen", [True, False])
def test_shapes_and_what_trains_in_each_regime(backbone, frozen):
    model = _build(backbone, frozen=frozen)
    assert model.decoder.layers == [0, 1]                    # depth 2: capped at the depth
    video = tiny_video()
    assert model(video).shape == (2, 5) and model.encode_video(video).shape == (2, 64)

    tower = dict(model.backbone.tower.named_parameters())
    head_only = _head_only(model)
    assert head_only and all(not tower[n].requires_grad for n in head_only)
    if frozen:
        assert not any(p.requires_grad for p in tower.values())
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert all(n.startswith(("decoder.", "head.", "backbone.slots.")) for n in trainable)
        assert any(n.startswith("backbone.slots.") for n in trainable)       # the local MHRAs train
    else:
        assert all(p.requires_grad for n, p in tower.items() if n not in head_only)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    torch.nn.functional.cross_entropy(model(video), torch.tensor([1, 3])).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} is trainable but got no gradient"
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"
    if not frozen:   # at init the gradient reaches every tower tensor through the fused CLS
        assert all(p.grad.abs().sum() > 0 for n, p in tower.items() if n not in head_only)
    optimizer.step()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def test_tower_trains_at_the_backbone_rate_and_the_new_modules_at_the_new_rate():
    model = _build(frozen=False)
    groups = {g["name"]: g for g in parameter_groups(model, lr=1e-3, backbone_lr=1e-5, weight_decay=0.05)}
    tower = {id(p) for p in model.backbone.tower.parameters()}
    for name, group in groups.items():
        in_tower = [id(p) in tower for p in group["params"]]
        assert all(in_tower) if name.startswith("backbone") else not any(in_tower)
        assert group["lr"] == (1e-5 if name.startswith("backbone") else 1e-3)
    assert {"backbone", "backbone-no-decay", "new", "new-no-decay"} == set(groups)


def test_local_mhra_is_the_identity_at_init_and_mixes_time_only_on_patches():
    grid, prefix, t = (2, 3), 1, 4                 # non-square grid: rows and columns cannot be swapped
    ctx = FrameContext(num_frames=t, grid=grid, num_prefix_tokens=prefix)
    module = LocalMHRA(8, 5)
    assert module.conv.weight.shape == (5, 1, 3, 1, 1) and module.conv.groups == 5
    x = torch.randn(2 * t, prefix + 6, 8)
    assert torch.equal(module(x, ctx), x)
    torch.nn.init.normal_(module.up.weight)
    y = module(x, ctx)
    assert torch.equal(y[:, :prefix], x[:, :prefix]) and not torch.allclose(y, x)
    # In eval mode (the BatchNorm's running statistics, not the batch's: in train mode every token
    # shifts every other through the statistics) only adjacent frames mix: changing frame 0 leaves
    # frames 2 and 3 unchanged, frame 1 not.
    module.eval()
    y = module(x, ctx)
    x2 = x.clone().reshape(2, t, prefix + 6, 8)
    x2[:, 0] += 1.0
    y2 = module(x2.reshape(2 * t, prefix + 6, 8), ctx).reshape(2, t, prefix + 6, 8)
    y = y.reshape(2, t, prefix + 6, 8)
    assert torch.equal(y2[:, 2:], y[:, 2:]) and not torch.allclose(y2[:, 1], y[:, 1])
    with pytest.raises(ValueError, match="2x3=6 patch tokens"):
        module(torch.randn(2 * t, prefix + 4, 8), ctx)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_local_blocks_leave_the_model_unchanged_at_init(backbone):
    model = _build(backbone)
    slots = model.backbone.slots
    assert all(list(s.before_attn) == list(s.before_mlp) == ["uniformerv2_local"] for s in slots)
    video = tiny_video()
    with_local = _embedding(model, video)
    for slot in slots:
        del slot.before_attn["uniformerv2_local"], slot.before_mlp["uniformerv2_local"]
    assert all(slot.is_empty() for slot in slots)
    # Up to the library's fused block call replacing the protocol's step-by-step one.
    torch.testing.assert_close(with_local, _embedding(model, video), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_the_decoder_adds_nothing_at_init_and_the_fusion_starts_at_one_half(backbone):
    video = tiny_video()
    model = _build(backbone, local=False).eval()
    decoder = model.decoder
    assert decoder.balance.shape == (64,) and torch.equal(decoder.fusion_weight(), torch.full((64,), 0.5))
    with torch.no_grad():
        frames, ctx = model._frames(video)
        tokens, _ = model.backbone.forward_tokens(frames, ctx)
        cls = tokens[:, 0].reshape(2, 4, -1).mean(dim=1)            # the final block's raw CLS, mean over time
        torch.testing.assert_close(model.encode_video(video), decoder.norm(0.5 * cls), rtol=0, atol=1e-6)

    frozen = _build(backbone, frozen=True, local=False).eval()
    assert frozen.decoder.balance is None                      # the official frozen variant: no fusion
    assert torch.equal(_embedding(frozen, video), torch.zeros(2, 64))   # LayerNorm(query = 0) = its zero bias
    assert _build(backbone, frozen=True, fusion="on").decoder.balance is not None
    assert _build(backbone, fusion="off").decoder.balance is None


def test_frame_order_matters_once_the_temporal_modules_are_nonzero():
    video = tiny_video()

    def sees_order(model):
        return not torch.allclose(_embedding(model, video), _embedding(model, video.flip(2)), atol=1e-5)

    assert not sees_order(_build()), "zero-init local MHRAs and decoder: the mean of per-frame CLS tokens"
    model = _build()
    torch.nn.init.normal_(model.backbone.slots[0].before_attn["uniformerv2_local"].up.weight)
    assert sees_order(model), "a non-zero local MHRA mixes adjacent frames"
    model = _build(local=False)
    for block in model.decoder.blocks:
        torch.nn.init.normal_(block.attn.out_proj.weight)
    assert sees_order(model), "a live decoder reads the 3x3x3 position conv, which sees the order"
    for conv in model.decoder.dpe:
        torch.nn.init.zeros_(conv.weight)
    assert not sees_order(model), "without the position conv, attention over all T*L tokens is order-blind"


def test_initialisation_follows_the_official_layout():
    model = _build(local=False)
    decoder, d = model.decoder, 64
    assert torch.equal(decoder.query_token, torch.zeros(1, 1, d))
    for conv, block in zip(decoder.dpe, decoder.blocks):
        assert conv.weight.shape == (d, 1, 3, 3, 3) and conv.groups == d and torch.equal(conv.bias, torch.zeros(d))
        attn, mlp = block.attn, block.mlp
        for p in (attn.out_proj.weight, attn.out_proj.bias, mlp.fc2.weight, mlp.fc2.bias,
                  attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias):
            assert not p.any()
        stacked = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        assert stacked.abs().max() <= math.sqrt(6 / (4 * d))   # one xavier draw over the (3D, D) in-projection
        assert stacked.abs().max() > 0.9 * math.sqrt(6 / (4 * d))
        assert mlp.fc1.weight.abs().max() <= math.sqrt(6 / (d + 4 * d)) and mlp.fc1.bias.abs().max() > 1e-3
        assert mlp.dropout.p == 0.5 and mlp.fc1.out_features == 4 * d
    local = _build().backbone.slots[0].before_attn["uniformerv2_local"]
    assert (local.down.out_features, local.up.in_features) == (int(d // 1.5),) * 2
    assert not local.up.weight.any() and not local.up.bias.any() and local.conv.weight.any()
    # the official BatchNorm3d(d_model) first, on the patch tokens: weight 1, bias 0, running statistics
    assert isinstance(local.norm, torch.nn.BatchNorm1d) and local.norm.num_features == d
    assert torch.equal(local.norm.weight, torch.ones(d)) and not local.norm.bias.any()


def test_options_and_limits():
    assert _build(num_global_layers=1).decoder.layers == [1]
    assert len(_build(num_global_layers=8).decoder.blocks) == 2
    single = _build(double_local=False).backbone.slots
    assert all(len(s.before_attn) == 1 and len(s.before_mlp) == 0 for s in single)
    assert all(s.is_empty() for s in _build(local=False).backbone.slots)
    assert _build(local_reduction=4).backbone.slots[0].before_attn["uniformerv2_local"].down.out_features == 16
    assert _build(mlp_dropout=0.1, mlp_ratio=2).decoder.blocks[0].mlp.fc1.out_features == 128
    for bad, match in (({"num_global_layers": 0}, "num_global_layers"), ({"local_reduction": 0.5}, "local_reduction"),
                       ({"fusion": "maybe"}, "fusion"), ({"mlp_dropout": 1.0}, "mlp_dropout")):
        with pytest.raises(ValueError, match=match):
            _build(**bad)
    with pytest.raises(ValueError, match="readout"):
        build_model("tiny-clip", "evl,uniformerv2")
    model = _build(local=False)
    assert model(tiny_video(frames=3)).shape == (2, 5)           # no table sized by the frame count
    with pytest.raises(ValueError, match="patch tokens"):
        model.decoder([torch.randn(8, 10, 64)] * 2, model.backbone.context(4), model.backbone)


def test_features_can_be_cached_when_nothing_inside_the_tower_changes():
    model = _build(frozen=True, local=False).eval()
    assert model.cacheable() and not _build(frozen=True).cacheable() and not _build(local=False).cacheable()
    video = tiny_video()
    for block in model.decoder.blocks:
        torch.nn.init.normal_(block.attn.out_proj.weight, std=0.1)
    with torch.no_grad():
        features = model.backbone_features(video)
        assert features.shape == (2, 2, 4, 17, 64)
        live = model(video)
        model.from_features = True
        assert torch.equal(model(features), live)


def test_checkpoint_round_trip(tmp_path):
    from adaptvid.checkpoints import load_model

    model = _build().eval()                                   # fine-tuned, with local MHRAs
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith("backbone.tower."):
            torch.nn.init.normal_(p, std=0.1)
    with torch.no_grad():
        for p in model.backbone.tower.parameters():
            if p.requires_grad:
                p.add_(0.01)
    model.save_adapter(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    video = tiny_video()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=0)


def test_checkpoint_restores_the_local_batchnorm_statistics_after_training(tmp_path):
    model = _build(mlp_dropout=0.0)                          # fine-tuned, with local MHRAs (x2 per block)
    check_batchnorm_checkpoint_round_trip(model, torch.nn.BatchNorm1d, 2 * model.backbone.depth, tmp_path)


def _decoder_count(d, k):
    dpe = d * 27 + d
    attn = 4 * d * d + 4 * d
    mlp = d * 4 * d + 4 * d + 4 * d * d + d
    return k * (dpe + attn + mlp + 3 * 2 * d) + d + 2 * d      # + query token + final LayerNorm


def _local_count(d, blocks):
    r = int(d // 1.5)
    return blocks * 2 * (2 * d + (d * r + r) + (3 * r + r) + (r * d + d))   # BatchNorm, down, dwconv, up


def test_vit_b16_parameter_counts_match_the_module_shapes():
    from adaptvid.runner.recipes import load_recipe

    d, head = 768, 768 * 400 + 400
    model = build_model("clip", "uniformerv2", num_classes=400, weights="random", frozen=True)
    assert model.decoder.layers == [8, 9, 10, 11]
    trainable, total = count_parameters(model)
    print(f"UniFormerV2 ViT-B/16 frozen (local x2 per block, no fusion) trainable excluding the head: {trainable - head:,}")
    assert trainable - head == _decoder_count(d, 4) + _local_count(d, 12) == 47_437_056
    assert _local_count(d, 12) == 18_991_104
    tower = sum(p.numel() for p in model.backbone.tower.parameters())
    assert tower == 86_192_640 and total - trainable == tower

    model = build_model("clip", "uniformerv2", num_classes=400, weights="random", local=False)   # the K400 recipe
    trainable, total = count_parameters(model)
    print(f"UniFormerV2 ViT-B/16 fine-tuned K400 (no local) trainable excluding the head: {trainable - head:,}")
    unused = 2 * d + d * 512                                   # ln_post and the CLIP projection stay frozen
    assert total - trainable == unused
    assert trainable - head == (tower - unused) + _decoder_count(d, 4) + d == 114_244_608   # + balance
    assert load_recipe("uniformerv2/k400-vit-b16-8f")["paper"]["trainable_params_excl_head"] == 114_244_608
    l14 = load_recipe("uniformerv2/k400-vit-l14-336-8f-frozen")["paper"]["trainable_params_excl_head"]
    assert l14 == _decoder_count(1024, 4) == 50_510_848


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("uniformerv2-demo")
    make_demo_data(root, videos_per_class_train=3, videos_per_class_val=2, num_frames=16)
    return root


@pytest.mark.parametrize("recipe", ["uniformerv2/k400-vit-b16-8f", "uniformerv2/k400-vit-l14-336-8f-frozen"])
def test_recipe_runs(recipe, demo, tmp_path):
    from adaptvid.cli import main

    assert main(["adapt", "--recipe", recipe, "--demo", "--demo-dir", str(demo),
                 "--output", str(tmp_path / "o"), "--set", "backbone=tiny-clip", "--set", "weights=null",
                 "--set", "train.precision=no", "--set", "train.batch_size=4", "--epochs", "1",
                 "--num-workers", "0", "--no-progress"]) == 0
    assert (tmp_path / "o" / "adapter.safetensors").is_file()
