"""adaptvid.model.profile and `adaptvid profile`: parameters, FLOPs against the bare tower, activation memory."""
import json

import pytest
import torch

from adaptvid import build_model, count_parameters
from adaptvid.cli import main
from adaptvid.model.profile import bare_backbone, format_profile, profile_model
from conftest import TINY_BACKBONES, tiny_video


def _tiny(backbone, method, **options):
    return build_model(backbone, method, num_classes=5, num_frames=4, **options)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_frozen_costs_the_bare_tower_and_saves_no_tower_activations(backbone):
    result = profile_model(_tiny(backbone, "frozen"))
    assert result["flops_ratio"] == 1.0
    assert result["gflops_per_view"] == result["gflops_bare_per_view"] > 0
    assert result["trainable_excl_head"] == 0
    assert result["activation_ratio"] < 0.05  # only the head's input: the frozen tower runs without autograd


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_full_finetuning_is_its_own_reference(backbone):
    result = profile_model(_tiny(backbone, "full"))
    assert result["flops_ratio"] == 1.0
    assert result["activation_ratio"] == 1.0
    assert result["activation_bytes"] == result["activation_bytes_full"] > 0


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("placement", ["mlp", "attn+mlp"])
def test_st_adapter_adds_flops_and_saves_less_than_full(backbone, placement):
    model = _tiny(backbone, "st-adapter", bottleneck=16, placement=placement)
    result = profile_model(model)
    assert result["flops_ratio"] > 1
    adapters = sum(p.numel() for slot in model.backbone.slots for p in slot.parameters())
    assert result["trainable_excl_head"] == adapters
    assert result["trainable"] == count_parameters(model)[0]
    assert 0 < result["activation_ratio"] < 1


def test_profiling_leaves_the_model_as_it_was():
    model = _tiny("tiny-clip", "st-adapter", bottleneck=16).eval()
    for module in model.modules():  # make the adapters do something, so their absence would show
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.normal_(module.weight)
    video = tiny_video()
    with torch.no_grad():
        before = model(video)
        with bare_backbone(model):
            assert all(slot.is_empty() for slot in model.backbone.slots)
            bare = model(video)
    assert not torch.allclose(before, bare)
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    profile_model(model)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(video), before)


def test_views_multiply_and_batch_scales_activations():
    model = _tiny("tiny-vit", "st-adapter", bottleneck=16)
    one = profile_model(model, views=(1, 1), batch=1)
    two = profile_model(model, num_frames=4, views=(4, 3), batch=2)
    assert two["gflops_total"] == two["gflops_per_view"] * 12
    assert two["gflops_per_view"] == one["gflops_per_view"]
    assert two["activation_bytes"] > one["activation_bytes"]
    text = format_profile(two)
    assert "attention counted" in text and "4x3" in text


def test_meta_device_counts_the_same_flops_without_memory():
    on_cpu = profile_model(_tiny("tiny-clip", "st-adapter", bottleneck=16))
    # A fresh model, not a deepcopy: the open_clip/HF block views bind the original blocks.
    on_meta = profile_model(_tiny("tiny-clip", "st-adapter", bottleneck=16).to("meta"))
    assert on_meta["gflops_per_view"] == on_cpu["gflops_per_view"]
    assert on_meta["flops_ratio"] == on_cpu["flops_ratio"]
    assert on_meta["activation_bytes"] is None and "activations" not in format_profile(on_meta)


@pytest.mark.parametrize("placement,ratio", [("mlp", 1.0791), ("attn+mlp", 1.1583)])
def test_vit_b16_flops_match_the_official_code(placement, ratio):
    # METHODS.md §8: CLIP ViT-B/16 is 281.015 GFLOPs per 8-frame clip; ST-Adapter 12x384 / 24x384 cost
    # 1.0791 / 1.1583 of it. Counted on the meta device: same shapes and ops, no arithmetic.
    model = build_model("clip", "st-adapter", num_classes=400, weights="random", placement=placement).to("meta")
    result = profile_model(model, num_frames=8)
    assert abs(result["gflops_bare_per_view"] - 281.015) / 281.015 < 0.005
    assert abs(result["flops_ratio"] - ratio) < 0.02


def test_cli_profile_json(capsys):
    argv = ["profile", "--backbone", "tiny-clip", "--method", "st-adapter", "--bottleneck", "16",
            "--frames", "4", "--views", "2x3", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gflops_total"] == result["gflops_per_view"] * 6
    assert result["views"] == "2x3" and result["frames"] == 4 and result["methods"] == ["st-adapter"]
    assert result["flops_ratio"] > 1 and result["activation_ratio"] < 1


def test_cli_profile_table_and_bad_views(capsys):
    assert main(["profile", "--backbone", "tiny-vit", "--method", "frozen", "--num-classes", "3"]) == 0
    assert "FLOPs ratio" in capsys.readouterr().out
    assert main(["profile", "--backbone", "tiny-vit", "--method", "frozen", "--views", "2x2"]) == 2
    assert "crops must be 1 or 3" in capsys.readouterr().err


def test_lora_layers_inside_the_tower_are_left_out_of_the_bare_count():
    import adaptvid

    if "lora" not in adaptvid.list_methods():
        pytest.skip("no lora method in this build")
    model = _tiny("tiny-clip", "lora").eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:  # nonzero updates, so the LoRA path computes something different
            torch.nn.init.normal_(p)
    frozen = _tiny("tiny-clip", "frozen").eval()
    video = tiny_video()
    with torch.no_grad():
        adapted = model(video)
        with bare_backbone(model):
            torch.testing.assert_close(model.encode_video(video), frozen.encode_video(video))
        assert torch.equal(model(video), adapted)
    result = profile_model(model)
    assert result["gflops_bare_per_view"] == profile_model(frozen)["gflops_bare_per_view"]
    assert result["flops_ratio"] > 1  # unmerged LoRA computes its low-rank path on every call
