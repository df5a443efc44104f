"""The method x backbone matrix on the tiny backbones."""
import pytest
import torch

import adaptvid
from adaptvid import build_model, count_parameters
from conftest import TINY_BACKBONES, check_one_training_step, tiny_video

METHODS = ("frozen", "full", "st-adapter")


def _build(backbone, method, **options):
    if method == "st-adapter":
        options.setdefault("bottleneck", 16)
    return build_model(backbone, method, num_classes=5, num_frames=4, **options)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("method", METHODS)
def test_shapes_gradients_and_frozen_weights(backbone, method):
    model = _build(backbone, method)
    video = tiny_video()
    assert model(video).shape == (2, 5)
    assert model.encode_video(video).shape == (2, model.embed_dim)

    check_one_training_step(model, video, torch.tensor([1, 3]), all_trainable_move=False, nonzero_grads=False)

    tower = {id(p) for p in model.backbone.tower.parameters()}
    tower_trainable = [p for p in model.parameters() if p.requires_grad and id(p) in tower]
    assert bool(tower_trainable) == (method == "full")


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("placement", ["mlp", "attn+mlp"])
def test_st_adapter_is_the_identity_at_init(backbone, placement):
    adapted = _build(backbone, "st-adapter", placement=placement).eval()
    frozen = _build(backbone, "frozen", pool="token-mean", project=False).eval()
    video = tiny_video()
    with torch.no_grad():
        assert torch.equal(adapted.encode_video(video), frozen.encode_video(video))
    # With autograd on, attention takes another kernel: equal to float rounding.
    torch.testing.assert_close(adapted.encode_video(video), frozen.encode_video(video), rtol=0, atol=1e-5)


def test_st_adapter_mixes_time_once_trained():
    model = _build("tiny-clip", "st-adapter").eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.normal_(module.weight)
    video = tiny_video()
    with torch.no_grad():
        forward = model.encode_video(video)
        backward = model.encode_video(video.flip(2))
    assert not torch.allclose(forward, backward, atol=1e-4), "adapted model should see the frame order"

    frozen = _build("tiny-clip", "frozen").eval()
    with torch.no_grad():
        torch.testing.assert_close(frozen.encode_video(video), frozen.encode_video(video.flip(2)))


def test_st_adapter_placements_count_adapters():
    one = _build("tiny-vit", "st-adapter", placement="mlp")
    two = _build("tiny-vit", "st-adapter", placement="attn+mlp")
    head = 64 * 5 + 5
    assert count_parameters(two)[0] - head == 2 * (count_parameters(one)[0] - head)


@pytest.mark.parametrize("placement,expected", [("mlp", 7_110_144), ("attn+mlp", 14_220_288)])
def test_st_adapter_vit_b16_parameter_count_matches_the_paper(placement, expected):
    model = build_model("clip", "st-adapter", num_classes=400, weights="random", placement=placement)
    trainable, total = count_parameters(model)
    head = 768 * 400 + 400  # ST-Adapter reads out the normed CLS (width 768), no CLIP projection
    assert abs((trainable - head) - expected) / expected < 0.02
    assert trainable - head == expected  # exact, since every tensor follows the official shapes
    assert total - trainable == 86_192_640  # the untouched CLIP ViT-B/16 image tower


def test_options_route_to_methods_and_bad_options_say_so():
    with pytest.raises(ValueError, match="valid options: bottleneck"):
        build_model("tiny-vit", "st-adapter", num_classes=2, bottlenek=8)
    with pytest.raises(ValueError, match="placement must be one of"):
        build_model("tiny-vit", "st-adapter", num_classes=2, placement="everywhere")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_model("tiny-vit", "nope", num_classes=2)
    assert adaptvid.get_method("adapter").name == "st-adapter"


def test_composition_and_registry_are_open():
    from dataclasses import dataclass

    @dataclass
    class ScaleConfig:
        factor: float = 1.0

    class Scale(torch.nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.factor = torch.nn.Parameter(torch.tensor(factor))

        def forward(self, x, ctx):
            return x * self.factor

    @adaptvid.register_method("test-scale", ScaleConfig, family="test")
    def apply_scale(model, config):
        model.backbone.slots[-1].add("after_block", "scale", Scale(config.factor))

    try:
        model = build_model("tiny-vit", "st-adapter,test-scale", num_classes=2, bottleneck=8, factor=1.0)
    finally:
        from adaptvid.methods.registry import _METHODS

        _METHODS.pop("test-scale")
    assert [name for name, _ in model.methods] == ["st-adapter", "test-scale"]
    slot = model.backbone.slots[-1]
    assert "st_adapter" in slot.before_mlp and "scale" in slot.after_block
    with pytest.raises(ValueError, match="listed twice"):
        build_model("tiny-vit", "frozen,frozen", num_classes=2)


def test_input_shape_is_checked():
    model = _build("tiny-vit", "frozen")
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(2, 4, 64, 64))


def test_multi_view_scores_are_the_mean_of_softmaxes():
    model = _build("tiny-clip", "frozen").eval()
    views = torch.randn(2, 3, 3, 4, 64, 64)
    with torch.no_grad():
        scores = model.forward_views(views)
        by_hand = torch.stack([model(views[:, v]).softmax(-1) for v in range(3)], 1).mean(1)
    torch.testing.assert_close(scores, by_hand)


def test_a_decoder_reads_chosen_layers_and_the_backbone_runs_without_autograd():
    class LastTwoCls(torch.nn.Module):
        layers = (0, -1)
        out_dim = 128

        def forward(self, layer_tokens, ctx, backbone):
            assert len(layer_tokens) == 2 and layer_tokens[0].shape[1:] == (17, 64)
            assert not layer_tokens[0].requires_grad  # frozen tower, nothing inside it trains
            cls = torch.cat([t[:, 0] for t in layer_tokens], dim=-1)           # (B*T, 128)
            return ctx.unfold(cls).mean(dim=1) * self.scale

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

    model = _build("tiny-vit", "frozen")
    model.set_decoder(LastTwoCls())
    assert model.head.in_features == 128
    logits = model(tiny_video())
    logits.sum().backward()
    assert model.decoder.scale.grad is not None
    with pytest.raises(ValueError, match="already has a decoder"):
        model.set_decoder(LastTwoCls())


def test_a_video_encoder_replaces_the_whole_encoding():
    class TwoPaths(torch.nn.Module):
        out_dim = 64

        def forward(self, video, model):
            b, _, t = video.shape[:3]
            frames = video.transpose(1, 2).flatten(0, 1)
            full, _ = model.backbone.forward_tokens(frames, model.backbone.context(t, tag="full"))
            half, _ = model.backbone.forward_tokens(frames[::2], model.backbone.context(t // 2, tag="half"))
            return full[:, 0].reshape(b, t, -1).mean(1) + half[:, 0].reshape(b, t // 2, -1).mean(1)

    model = _build("tiny-vit", "frozen")
    model.set_video_encoder(TwoPaths())
    assert model(tiny_video()).shape == (2, 5) and not model.cacheable()


def test_tower_parameters_a_method_trains_get_the_new_modules_learning_rate():
    from adaptvid.train.schedule import parameter_groups

    model = _build("tiny-clip", "st-adapter")
    model.train_tower_parameters(*model.backbone.final_norms())
    groups = parameter_groups(model, lr=1e-3, backbone_lr=1e-5, weight_decay=0.05)
    norm_ids = {id(p) for n in model.backbone.final_norms() for p in n.parameters()}
    for group in groups:
        if norm_ids & {id(p) for p in group["params"]}:
            assert group["lr"] == 1e-3
    full = _build("tiny-clip", "full")
    assert {g["lr"] for g in parameter_groups(full, 1e-3, 1e-5, 0.05)} == {1e-3, 1e-5}


def test_the_shared_bottleneck_adapter_starts_as_identity_or_zero_and_is_affine_without_gelu():
    from adaptvid.methods._blocks import Bottleneck

    x = torch.randn(4, 16)
    assert torch.equal(Bottleneck(16, 4)(x), x)                                  # skip: the identity at init
    assert torch.equal(Bottleneck(16, 4, skip=False)(x), torch.zeros_like(x))   # branch: zero at init
    for skip in (True, False):
        adapter = Bottleneck(16, 4, activation=False, scale=0.5, skip=skip, dropout=0.3).eval()
        torch.nn.init.normal_(adapter.up.weight)
        torch.nn.init.normal_(adapter.up.bias)
        A, a = adapter.affine()
        torch.testing.assert_close(adapter(x), (x.double() @ A.t() + a).float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not affine"):
        Bottleneck(16, 4).affine()
