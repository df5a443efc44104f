"""AIM on the tiny backbones: identity at init, what trains, time, drop path, the ViT-B/16 count, recipes."""
import pytest
import torch

from adaptvid import build_model, count_parameters, load_model
from adaptvid.methods._blocks import Bottleneck
from adaptvid.methods.aim import DropPath, TemporalAdaptation
from adaptvid.train.schedule import parameter_groups
from conftest import TINY_BACKBONES, tiny_video, check_one_training_step

FRAMES = 4


def _build(backbone, method="aim", **options):
    return build_model(backbone, method, num_classes=5, num_frames=FRAMES, **options)


def _randomise_adapters(model, std=0.05):
    """Give every adapter's zero-init up-projection (and the temporal embedding) non-zero values."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Bottleneck):
                module.up.weight.copy_(torch.randn(module.up.weight.shape, generator=generator) * std)
                module.up.bias.copy_(torch.randn(module.up.bias.shape, generator=generator) * std)
        for name, p in model.named_parameters():
            if name.endswith("temporal_embedding"):
                p.copy_(torch.randn(p.shape, generator=generator))
    return model


def _is_aim_or_head(name):
    return (".aim_temporal." in name or ".aim_spatial." in name or ".aim_mlp." in name
            or name == "backbone.before_pre_norm.aim.temporal_embedding" or name.startswith("head."))


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_shapes_and_identity_at_init(backbone):
    adapted = _build(backbone).eval()
    frozen = _build(backbone, "frozen", pool="embed-mean", project=False).eval()
    assert adapted.pool == "embed-mean" and adapted.project is False
    video = tiny_video(frames=FRAMES)
    assert adapted(video).shape == (2, 5)
    assert adapted.encode_video(video).shape == (2, adapted.backbone.width)
    with torch.no_grad():
        # Every adapter adds an exact 0 (zeroed up-projection), the temporal embedding is 0 and the
        # spatial/MLP paths run the same kernels as the library's block: bit-identical.
        assert torch.equal(adapted.encode_video(video), frozen.encode_video(video))
    # With autograd on (the final norm trains, so the tower runs with autograd) the attention may
    # take another kernel than the no-grad library call: equal to float rounding.
    torch.testing.assert_close(adapted.encode_video(video), frozen.encode_video(video), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_only_what_the_paper_trains_gets_gradients(backbone):
    model = _randomise_adapters(_build(backbone))  # non-zero up-projections: every adapter tensor gets a gradient
    norms = {id(p) for m in model.backbone.final_norms() for p in m.parameters()}
    assert norms, "the tower's final norm should be found"
    tower = {id(p) for p in model.backbone.tower.parameters()}
    for name, p in model.named_parameters():
        expected = _is_aim_or_head(name) or id(p) in norms
        assert p.requires_grad == expected, f"{name}: requires_grad={p.requires_grad}"
        if id(p) in tower:
            assert p.requires_grad == (id(p) in norms), name

    # ... and it trains at the new modules' learning rate, not the reduced backbone_lr.
    for group in parameter_groups(model, lr=1e-3, backbone_lr=1e-5, weight_decay=0.05):
        assert group["lr"] == 1e-3, group["name"]

    check_one_training_step(model, tiny_video(frames=FRAMES), torch.tensor([1, 3]))


def test_the_zero_init_up_projection_still_lets_every_adapter_learn():
    model = _build("tiny-clip")
    torch.nn.functional.cross_entropy(model(tiny_video(frames=FRAMES)), torch.tensor([1, 3])).backward()
    for name, p in model.named_parameters():
        if ".up." in name or name.endswith("temporal_embedding"):
            assert p.grad.abs().sum() > 0, f"{name} gets no gradient at init"


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_frame_order_is_seen_once_trained_and_not_by_frozen(backbone):
    model = _randomise_adapters(_build(backbone)).eval()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        forward, backward = model.encode_video(video), model.encode_video(video.flip(2))
    assert not torch.allclose(forward, backward, atol=1e-4), "AIM should see the frame order"
    frozen = _build(backbone, "frozen", pool="embed-mean", project=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(frozen.encode_video(video), frozen.encode_video(video.flip(2)))


def test_the_temporal_branch_mixes_frames_and_order_comes_from_the_temporal_embedding():
    model = _randomise_adapters(_build("tiny-clip", temporal_embedding=False)).eval()
    assert "aim" not in model.backbone.before_pre_norm
    video = tiny_video(frames=FRAMES)
    changed = video.clone()
    changed[:, :, -1] = torch.randn_like(changed[:, :, -1])
    with torch.no_grad():
        frames, frames_changed = model.encode_frames(video), model.encode_frames(changed)
        # Frame 0 is untouched, yet its embedding moves: the temporal attention reads the other frames.
        assert not torch.allclose(frames[:, 0], frames_changed[:, 0], atol=1e-4)
        # Attention over time with no temporal position is permutation-equivariant, so without the
        # temporal embedding the mean over frames cannot tell the order.
        torch.testing.assert_close(model.encode_video(video), model.encode_video(video.flip(2)), rtol=0, atol=1e-5)
    frozen = _build("tiny-clip", "frozen", pool="embed-mean", project=False).eval()
    with torch.no_grad():
        assert torch.equal(frozen.encode_frames(video)[:, 0], frozen.encode_frames(changed)[:, 0])


def test_drop_path_rates_masks_and_eval_determinism():
    model = _randomise_adapters(_build("tiny-clip", drop_path=0.6))
    paths = [m for m in model.modules() if isinstance(m, DropPath)]
    assert [round(m.rate, 6) for m in paths] == [0.0, 0.0, 0.6, 0.6]  # linear 0 -> 0.6 over 2 blocks, 2 per block
    video = tiny_video(frames=FRAMES)

    undropped = _build("tiny-clip", drop_path=0.0)
    undropped.load_state_dict(model.state_dict())
    model.eval()
    undropped.eval()
    with torch.no_grad():
        first, second = model.encode_video(video), model.encode_video(video)
        assert torch.equal(first, second)                          # deterministic in eval
        assert torch.equal(first, undropped.encode_video(video))   # drop path is off in eval

    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        draws = [model.encode_video(video) for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:]), "drop path should be stochastic in training"
    undropped.train()
    with torch.no_grad():
        assert torch.equal(undropped.encode_video(video), undropped.encode_video(video))


@pytest.mark.parametrize("mask", ["token", "video"])
def test_drop_path_masks(mask):
    path = DropPath(0.5, mask).train()
    torch.manual_seed(0)
    out = path(torch.ones(3 * FRAMES, 50, 8), FRAMES)              # (B*T, N, D)
    assert set(out.unique().tolist()) <= {0.0, 2.0}                # kept branches rescaled by 1/keep
    if mask == "token":   # one draw per token position, shared by every clip and frame (official code)
        assert torch.equal(out, out[:1].expand_as(out))
        assert len(out[0, :, 0].unique()) == 2
    else:                 # one draw per video, shared by its frames and tokens
        per_video = out.reshape(3, FRAMES, 50, 8)
        assert torch.equal(per_video, per_video[:, :1, :1, :1].expand_as(per_video))
    assert torch.equal(path.eval()(torch.ones(2, 3, 4), 1), torch.ones(2, 3, 4))


def test_two_temporal_adapters_and_options():
    one = _build("tiny-vit")
    two = _build("tiny-vit", num_tadapter=2)
    adapter = 64 * 16 + 16 + 16 * 64 + 64
    assert count_parameters(two)[0] - count_parameters(one)[0] == 2 * adapter  # one more per block
    temporal = [m for m in two.modules() if isinstance(m, TemporalAdaptation)]
    assert all(m.adapter_in is not None and m.adapter_in.skip for m in temporal)
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        torch.testing.assert_close(two.eval().encode_video(video), one.eval().encode_video(video), rtol=0, atol=0)

    with pytest.raises(ValueError, match="num_tadapter must be 1 or 2"):
        _build("tiny-vit", num_tadapter=3)
    with pytest.raises(ValueError, match="drop_path_mask must be one of"):
        _build("tiny-vit", drop_path_mask="sample")
    with pytest.raises(ValueError, match="drop_path must be in"):
        _build("tiny-vit", drop_path=1.0)
    with pytest.raises(ValueError, match="built for 4 frames"):
        one(tiny_video(frames=2))


def test_checkpoint_round_trip_keeps_the_final_norm(tmp_path):
    model = _randomise_adapters(_build("tiny-clip"))
    with torch.no_grad():
        model.backbone.tower.ln_post.weight.mul_(1.5)
    model.save_adapter(tmp_path / "ckpt", class_names=[f"c{i}" for i in range(5)])
    loaded = load_model(tmp_path / "ckpt")
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        assert torch.equal(model.eval()(video), loaded.eval()(video))


def test_vit_b16_parameter_count_matches_the_official_code():
    model = build_model("clip", "aim", num_classes=400, weights="random")  # 8 frames
    trainable, total = count_parameters(model)
    head = 768 * 400 + 400
    adapter = 768 * 192 + 192 + 192 * 768 + 768            # 295,872
    expected = 3 * 12 * adapter + 8 * 768 + 2 * 768         # adapters + temporal embedding + ln_post
    print(f"AIM ViT-B/16 8f trainable excluding the head: {trainable - head:,} (official 10,659,072)")
    assert expected == 10_659_072
    assert abs((trainable - head) - 10_659_072) / 10_659_072 < 0.02
    assert trainable - head == 10_659_072
    assert total - trainable == 86_192_640 - 2 * 768        # the CLIP tower less its (trained) ln_post
    # SSv2 config (num_tadapter=2): 12 more adapters, 14,209,536 (METHODS.md section 8).
    assert 10_659_072 + 12 * adapter == 14_209_536


# -- recipes -------------------------------------------------------------------------------------

AIM_RECIPES = ("aim/k400-vit-b16-8f", "aim/ssv2-vit-b16-8f")


@pytest.fixture(scope="module")
def tmp_demo(tmp_path_factory):
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("aim-demo")
    make_demo_data(root, videos_per_class_train=3, videos_per_class_val=2, num_frames=16)
    return root


@pytest.mark.parametrize("name", AIM_RECIPES)
def test_recipe_is_complete(name):
    from adaptvid.runner.recipes import load_recipe

    recipe = load_recipe(name)
    assert recipe["method"] == "aim" and recipe["backbone"] == "clip"
    paper = recipe["paper"]
    for key in ("citation", "top1", "views", "frames", "trainable_params_excl_head", "gflops_ratio_vs_image_model"):
        assert key in paper, key
    assert paper["views"] == recipe["train"]["views"]
    from adaptvid.methods.aim import AIMConfig

    AIMConfig(**recipe.get("options", {}))  # every option is a valid AIM field


@pytest.mark.parametrize("name", AIM_RECIPES)
def test_recipe_runs_on_the_tiny_backbone(name, tmp_demo, tmp_path):
    from adaptvid.cli import main

    assert main(["adapt", "--recipe", name, "--demo", "--demo-dir", str(tmp_demo), "--output", str(tmp_path / "o"),
                 "--set", "backbone=tiny-clip", "--set", "weights=null", "--set", "train.precision=no",
                 "--set", "train.batch_size=4", "--epochs", "1", "--num-workers", "0", "--no-progress"]) == 0
    assert (tmp_path / "o" / "adapter.safetensors").exists()
