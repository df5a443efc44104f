"""DualPath on the tiny backbones: the two inputs, paths kept apart, identity at init, what trains, the
ViT-B/16 count, checkpoints, the recipe."""
import pytest
import torch
import torch.nn.functional as F

from adaptvid import build_model, count_parameters, load_model
from adaptvid.methods._blocks import Bottleneck
from adaptvid.methods.dualpath import (DualPathEncoder, grid_framesets, spatial_frames, spatial_indices,
                                       tile_of_patch)
from adaptvid.train.schedule import parameter_groups
from conftest import TINY_BACKBONES, tiny_video, check_one_training_step

FRAMES, SPATIAL, GRID = 8, 4, 2   # spatial path: frames 0, 2, 4, 6; temporal path: 2 framesets of 2x2 frames


def _build(backbone="tiny-clip", method="dualpath", **options):
    if method == "dualpath":
        options = {"spatial_frames": SPATIAL, "grid": GRID, **options}
    return build_model(backbone, method, num_classes=5, num_frames=FRAMES, **options)


def _randomise(model, std=0.05, names=("",)):
    """Non-zero values for the zero-init tensors (adapter up-projections and biases, temporal embedding)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and any(key in name for key in names) and not name.startswith(("head.", "video_encoder.")):
                if ".down.weight" not in name:   # the down-projection already has its (non-zero) default init
                    p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


SPATIAL_KEYS = (".attention.dualpath.spatial.", ".mlp_parallel.dualpath_spatial.")
TEMPORAL_KEYS = (".attention.dualpath.temporal_in.", ".attn_branch.dualpath_temporal.", ".mlp_out.dualpath_temporal.",
                 "before_pre_norm.dualpath.")


def _zero(model, keys):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(key in name for key in keys):
                p.zero_()
    return model


def _images(x):
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def _cls(backbone, images, tag=""):
    t = images.shape[2]
    return backbone.forward_tokens(_images(images), backbone.context(t, tag=tag))[0][:, 0].reshape(images.shape[0], t, -1)


# -- the two inputs ----------------------------------------------------------------------------------

def test_grid_framesets_put_frame_k_at_tile_k_row_major():
    b, t, size = 2, 8, 8
    value = torch.arange(b * 3 * t, dtype=torch.float32).reshape(b, 3, t, 1, 1)
    video = value.expand(b, 3, t, size, size).contiguous()       # every frame (and channel) one constant
    sets = grid_framesets(video, 2)
    assert sets.shape == (b, 3, 2, size, size)
    half = size // 2
    for j in range(2):
        for k in range(4):
            row, col = divmod(k, 2)
            tile = sets[:, :, j, row * half:(row + 1) * half, col * half:(col + 1) * half]
            expected = value[:, :, j * 4 + k].expand_as(tile)
            torch.testing.assert_close(tile, expected, rtol=0, atol=1e-4)

    # On real content each tile is that frame downscaled by 1/grid on its own (no bleeding across tiles).
    video = torch.randn(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    sets = grid_framesets(video, 2)
    for k in range(4):
        row, col = divmod(k, 2)
        small = F.interpolate(video[:, :, k], size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
        assert torch.equal(sets[:, :, 0, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8], small)
    assert torch.equal(grid_framesets(video, 1), video)           # grid 1: every frame its own frameset
    with pytest.raises(ValueError, match="framesets of 2x2=4"):
        grid_framesets(torch.zeros(1, 3, 6, 16, 16), 2)
    with pytest.raises(ValueError, match="do not split into a 3x3 grid"):
        grid_framesets(torch.zeros(1, 3, 9, 16, 16), 3)


def test_spatial_frames_and_tiles_of_patches():
    assert spatial_indices(32, 8) == [0, 4, 8, 12, 16, 20, 24, 28]   # every T/Ts-th frame from frame 0
    assert spatial_indices(16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert spatial_indices(8, 8) == list(range(8))
    video = torch.arange(8.0).reshape(1, 1, 8, 1, 1)
    assert spatial_frames(video, 4).flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="9 spatial frames"):
        spatial_indices(8, 9)
    # tiny backbones: a 4x4 patch grid, grid 2 -> 2x2 patches per tile
    assert tile_of_patch((4, 4), 2).reshape(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    # ViT-B/16 at 224 px, grid 4: 56 px tiles = 3.5 patches; a patch goes to the tile holding its centre
    tiles = tile_of_patch((14, 14), 4).reshape(14, 14)
    assert tiles[:, 0].tolist() == [0] * 3 + [4] * 4 + [8] * 3 + [12] * 4
    assert tiles[0].tolist() == [0] * 3 + [1] * 4 + [2] * 3 + [3] * 4


# -- the model ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_shapes_and_each_path_is_the_frozen_tower_at_init(backbone):
    model = _build(backbone).eval()
    encoder = model.video_encoder
    assert isinstance(encoder, DualPathEncoder) and not model.cacheable()
    video = tiny_video(frames=FRAMES)
    assert model(video).shape == (2, 5)
    assert model.encode_video(video).shape == (2, model.backbone.embed_dim)
    frozen = _build(backbone, "frozen").eval()
    spatial, temporal = encoder.inputs(video)
    with torch.no_grad():
        s_cls, t_cls = encoder.path_tokens(video, model)
        assert s_cls.shape == (2, SPATIAL, 64) and t_cls.shape == (2, FRAMES // GRID ** 2, 64)
        # Zero up-projections and a zero temporal embedding add exact zeros: the same numbers as the
        # library's own blocks on the same images.
        assert torch.equal(s_cls, _cls(frozen.backbone, spatial))
        assert torch.equal(t_cls, _cls(frozen.backbone, temporal))
        s_feat, t_feat = encoder.path_features(video, model)
        assert torch.equal(s_feat, frozen.backbone.head(_cls(frozen.backbone, spatial)).mean(1))
        assert torch.equal(t_feat, frozen.backbone.head(_cls(frozen.backbone, temporal)).mean(1))


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_each_paths_adapters_act_on_that_path_only(backbone):
    model = _randomise(_build(backbone)).eval()
    state = model.state_dict()
    no_temporal = _zero(_build(backbone), TEMPORAL_KEYS).eval()
    no_spatial = _zero(_build(backbone), SPATIAL_KEYS).eval()
    for other, keys in ((no_temporal, TEMPORAL_KEYS), (no_spatial, SPATIAL_KEYS)):
        other.load_state_dict({k: v for k, v in state.items() if not any(key in k for key in keys)}, strict=False)
    frozen = _build(backbone, "frozen").eval()
    images = tiny_video(frames=FRAMES)[:, :, :2]
    with torch.no_grad():
        spatial = _cls(model.backbone, images, "spatial")
        temporal = _cls(model.backbone, images, "temporal")
        plain = _cls(frozen.backbone, images)
        assert torch.equal(spatial, _cls(no_temporal.backbone, images, "spatial"))   # temporal modules: identity
        assert torch.equal(temporal, _cls(no_spatial.backbone, images, "temporal"))  # spatial modules: identity
        assert not torch.allclose(spatial, plain, atol=1e-4)
        assert not torch.allclose(temporal, plain, atol=1e-4)
        assert not torch.allclose(spatial, temporal, atol=1e-4)
        # An untagged run (encode_frames, other tools) is the plain image tower.
        assert torch.equal(_cls(model.backbone, images), plain)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_only_adapters_temporal_embedding_and_head_train(backbone):
    model = _randomise(_build(backbone))   # non-zero up-projections: every adapter tensor gets a gradient
    tower = {id(p) for p in model.backbone.tower.parameters()}
    for name, p in model.named_parameters():
        expected = (any(key in name for key in SPATIAL_KEYS + TEMPORAL_KEYS)
                    or name.startswith(("head.", "video_encoder.fc.")))
        assert p.requires_grad == expected, f"{name}: requires_grad={p.requires_grad}"
        assert not (id(p) in tower and p.requires_grad), name
    for group in parameter_groups(model, lr=1e-3, backbone_lr=1e-5, weight_decay=0.05):
        assert group["lr"] == 1e-3, group["name"]

    model.train()
    check_one_training_step(model, tiny_video(frames=FRAMES), torch.tensor([1, 3]))


def test_the_zero_init_up_projections_and_embedding_get_gradients_at_init():
    model = _build()
    F.cross_entropy(model(tiny_video(frames=FRAMES)), torch.tensor([1, 3])).backward()
    for name, p in model.named_parameters():
        if ".up." in name or name.endswith("temporal_embedding"):
            assert p.grad.abs().sum() > 0, f"{name} gets no gradient at init"


def test_frame_order_within_a_frameset_reaches_only_the_temporal_path_even_at_init():
    model = _build().eval()
    encoder = model.video_encoder
    video = tiny_video(frames=FRAMES)
    swapped = video.clone()
    swapped[:, :, [1, 3]] = video[:, :, [3, 1]]    # two frames of frameset 0 that the spatial path does not see
    with torch.no_grad():
        s, t = encoder.path_features(video, model)
        s2, t2 = encoder.path_features(swapped, model)
        assert torch.equal(s, s2)
        # The frozen tower's position embedding tells tiles apart: a frameset with two tiles swapped is
        # another image, so the order is seen before any training.
        assert not torch.allclose(t, t2, atol=1e-4)
        assert not torch.allclose(model.encode_video(video), model.encode_video(swapped), atol=1e-6)
    frozen = _build(backbone="tiny-clip", method="frozen").eval()
    with torch.no_grad():
        torch.testing.assert_close(frozen.encode_video(video), frozen.encode_video(swapped))


def test_the_temporal_embedding_marks_each_frame_of_each_frameset():
    model = _build().eval()
    embedding = model.backbone.before_pre_norm["dualpath"]
    assert embedding.temporal_embedding.shape == (FRAMES, 64)
    with torch.no_grad():
        embedding.temporal_embedding.copy_(torch.arange(FRAMES, dtype=torch.float32)[:, None].expand(FRAMES, 64))
    tokens = torch.zeros(2 * 2, 17, 64)   # 2 clips x 2 framesets, CLS + 4x4 patches
    ctx = model.backbone.context(2, tag="temporal")
    out = embedding(tokens, ctx).reshape(2, 2, 17, 64)
    assert torch.equal(out[:, :, 0], torch.zeros(2, 2, 64))            # CLS gets nothing
    tiles = tile_of_patch((4, 4), GRID)
    for j in range(2):
        assert out[0, j, 1:, 0].tolist() == (j * 4 + tiles).float().tolist()
    assert torch.equal(embedding(tokens, model.backbone.context(2, tag="spatial")), tokens)


def test_serial_adapters_without_skip_start_the_temporal_path_as_identity_blocks():
    model = _build(serial_skip=False).eval()
    assert all(not m.skip for name, m in model.named_modules() if isinstance(m, Bottleneck) and "temporal" in name)
    frozen = _build(method="frozen").eval()
    video = tiny_video(frames=FRAMES)
    spatial, temporal = model.video_encoder.inputs(video)
    with torch.no_grad():
        s_cls, t_cls = model.video_encoder.path_tokens(video, model)
        assert torch.equal(s_cls, _cls(frozen.backbone, spatial))
        # As the released code: the blocks add nothing, the CLS leaves the tower as it entered.
        expected = frozen.backbone.embed(_images(temporal))[:, 0].reshape(t_cls.shape)
        assert torch.equal(t_cls, expected)


def test_options_counts_and_errors():
    model = _build("tiny-vit")
    adapter = 64 * 16 + 16 + 16 * 64 + 64
    head = (2 * 64 * 64 + 64) + (64 * 5 + 5)          # tiny-vit: no projection, E = D = 64
    assert count_parameters(model)[0] == 2 * 5 * adapter + FRAMES * 64 + head
    assert count_parameters(_build("tiny-vit", temporal_embedding=False))[0] == 2 * 5 * adapter + head
    unprojected = _build("tiny-clip", projection=False)
    assert unprojected.video_encoder.out_dim == 64 and unprojected.head.in_features == 64
    assert unprojected(tiny_video(frames=FRAMES)).shape == (2, 5) and unprojected.project is False
    assert _build("tiny-clip").video_encoder.out_dim == 32                # the CLIP projection's width
    with pytest.raises(ValueError, match="pass projection= instead"):
        _build("tiny-clip", project=False)(tiny_video(frames=FRAMES))     # the readout flag cannot change it
    with pytest.raises(ValueError, match="multiple of grid"):
        build_model("tiny-clip", "dualpath", num_classes=5, num_frames=6, spatial_frames=4, grid=2)
    with pytest.raises(ValueError, match="e.g. num_frames=16"):
        build_model("tiny-clip", "dualpath", num_classes=5, num_frames=8)  # 8 spatial frames, 4x4 framesets
    with pytest.raises(ValueError, match="built for 8 frames"):
        model(tiny_video(frames=4))
    with pytest.raises(ValueError, match="claim the model's readout"):
        build_model("tiny-clip", "dualpath,evl", num_classes=5, num_frames=FRAMES, spatial_frames=SPATIAL, grid=GRID)
    for bad in ({"grid": 0}, {"spatial_frames": 0}, {"dropout": 1.0}, {"ratio": 0.0}):
        with pytest.raises(ValueError, match="dualpath"):
            _build(**bad)
    # The paper's setting on the tiny tower: 16 frames = 8 spatial + one 4x4 frameset of 16 px tiles.
    paper = build_model("tiny-clip", "dualpath", num_classes=5, num_frames=16).eval()
    with torch.no_grad():
        s, t = paper.video_encoder.path_tokens(tiny_video(frames=16), paper)
    assert s.shape == (2, 8, 64) and t.shape == (2, 1, 64)


def test_checkpoint_round_trip(tmp_path):
    model = _randomise(_build())
    with torch.no_grad():
        model.video_encoder.fc.weight.mul_(1.5)
    model.save_adapter(tmp_path / "ckpt", class_names=[f"c{i}" for i in range(5)])
    loaded = load_model(tmp_path / "ckpt")
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        assert torch.equal(model.eval()(video), loaded.eval()(video))


def test_vit_b16_parameter_count():
    # The paper's K400 setting: 32 frames = 8 spatial frames + 2 framesets of 4x4.
    model = build_model("clip", "dualpath", num_classes=400, weights="random", num_frames=32)
    trainable, total = count_parameters(model)
    adapter = 768 * 192 + 192 + 192 * 768 + 768            # 295,872
    adapters = 5 * 12 * adapter                              # 17,752,320
    embedding = 32 * 768                                     # 24,576
    head = (1024 * 512 + 512) + (512 * 400 + 400)            # MLP head on [temporal, spatial] CLIP embeddings
    print(f"DualPath ViT-B/16 32f trainable: {trainable:,}; without the MLP head {trainable - head:,} "
          f"(METHODS.md: ~10M, from the paper, not re-checked)")
    assert trainable == adapters + embedding + head == 18_506_896
    assert total - trainable == 86_192_640                   # the whole CLIP image tower, ln_post and proj included


# -- recipe ------------------------------------------------------------------------------------------

RECIPE = "dualpath/k400-vit-b16"


@pytest.fixture(scope="module")
def tmp_demo(tmp_path_factory):
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("dualpath-demo")
    make_demo_data(root, videos_per_class_train=3, videos_per_class_val=2, num_frames=16)
    return root


def test_recipe_is_complete():
    from adaptvid.methods.dualpath import DualPathConfig
    from adaptvid.runner.recipes import load_recipe

    recipe = load_recipe(RECIPE)
    assert recipe["method"] == "dualpath" and recipe["backbone"] == "clip"
    paper = recipe["paper"]
    for key in ("citation", "top1", "views", "frames", "trainable_params_excl_head", "licence"):
        assert key in paper, key
    assert paper["views"] == recipe["train"]["views"]
    config = DualPathConfig(**recipe.get("options", {}))
    frames = recipe["model"]["frames"]
    assert frames == paper["frames"] and frames % config.grid ** 2 == 0 and frames >= config.spatial_frames


@pytest.mark.parametrize("name", [RECIPE, "dualpath/demo-tiny"])
def test_recipe_runs_on_the_tiny_backbone(name, tmp_demo, tmp_path):
    from adaptvid.cli import main

    assert main(["adapt", "--recipe", name, "--demo", "--demo-dir", str(tmp_demo), "--output", str(tmp_path / "o"),
                 "--set", "backbone=tiny-clip", "--set", "weights=null", "--set", "train.precision=no",
                 "--set", "train.batch_size=4", "--epochs", "1", "--num-workers", "0", "--no-progress"]) == 0
    assert (tmp_path / "o" / "adapter.safetensors").exists()
