import pytest
import torch

from adaptvid import BackboneLoadError, create_backbone, list_backbones
from conftest import TINY_BACKBONES


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_protocol_matches_the_library_forward(name):
    backbone = create_backbone(name).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = backbone(images), backbone.library_forward(images)
    assert ours.shape == (3, backbone.embed_dim)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_protocol_fields(name):
    backbone = create_backbone(name)
    assert backbone.width == 64 and backbone.patch_size == 16 and backbone.image_size == 64
    assert backbone.grid == (4, 4) and backbone.depth == 2 and len(backbone.slots) == 2
    tokens = backbone.embed(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 1 + 16, 64)
    assert len(backbone.preprocess.mean) == 3 and backbone.preprocess.image_size == 64


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_tiny_backbones_are_deterministic_and_random_is_not(name):
    a, b = create_backbone(name), create_backbone(name)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = create_backbone(name, weights="random")
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def _save_library_weights(backbone, path):
    """Save the way each library's users have its weights on disk."""
    if backbone.library == "open_clip":
        file = path / "open_clip_model.bin"
        torch.save(backbone.text.model.state_dict(), file)
        return str(file)
    if backbone.library == "transformers":
        backbone.text.model.save_pretrained(path)
        return str(path)
    from safetensors.torch import save_file

    file = path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.tower.state_dict().items()}, file)
    return str(file)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_local_weights_load_through_the_library_loader(name, tmp_path):
    source = create_backbone(name, weights="random")
    weights = _save_library_weights(source, tmp_path)
    loaded = create_backbone(name, weights=weights)
    default = create_backbone(name)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), source(images))
        assert not torch.allclose(default(images), source(images))


def test_unreachable_hub_fails_fast_with_a_fix():
    with pytest.raises(BackboneLoadError) as info:
        create_backbone("clip")
    message = str(info.value)
    assert "'clip'" in message and "--weights" in message and "openai" in message


def test_missing_local_weights_and_unknown_names():
    with pytest.raises(BackboneLoadError, match="does not exist"):
        create_backbone("tiny-vit", weights="/no/such/file.safetensors")
    with pytest.raises(BackboneLoadError, match="unknown backbone 'nope'"):
        create_backbone("nope")


def test_list_backbones_names_every_family():
    names = list_backbones()
    for key in ("clip", "clip-b32", "clip-l14", "tiny-clip", "tiny-hf-clip", "tiny-vit", "open_clip:...", "hf:...", "timm:..."):
        assert key in names and names[key]


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_qkv_handles_recompute_the_library_attention(name):
    from adaptvid.backbones import attention

    backbone = create_backbone(name).eval()
    x = torch.randn(3, 17, 64)
    with torch.no_grad():
        for view in backbone.views:
            xn = view.norm1(x)
            q, k, v = view.qkv(xn)
            assert q.shape == (3, view.num_heads, 17, 64 // view.num_heads)
            torch.testing.assert_close(view.attn_out(attention(q, k, v)), view.attn(xn), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_every_hook_point_runs_in_block_order(name):
    from adaptvid.backbones import FrameContext
    from adaptvid.backbones.base import run_block

    backbone = create_backbone(name).eval()
    view, slot = backbone.views[0], backbone.slots[0]
    calls = []

    class Probe(torch.nn.Module):
        def __init__(self, point, out=None):
            super().__init__()
            self.point, self.out = point, out

        def forward(self, x, ctx):
            calls.append(self.point)
            return x if self.out is None else self.out(x)

    for point in ("after_block", "mlp_out", "mlp_parallel", "mlp_in", "before_mlp", "attn_branch", "before_attn"):
        slot.add(point, "probe", Probe(point, torch.zeros_like if point == "mlp_parallel" else None))
    slot.add("attention", "probe", Probe("attention", view.attn))
    with pytest.raises(ValueError, match="already does"):
        slot.add("attention", "other", Probe("attention"))
    x = torch.randn(2, 17, 64)
    ctx = FrameContext(num_frames=1, grid=(4, 4), num_prefix_tokens=1)
    with torch.no_grad():
        torch.testing.assert_close(run_block(view, slot, x, ctx), view.forward(x), rtol=1e-5, atol=1e-5)
    assert calls == ["before_attn", "attention", "attn_branch", "before_mlp", "mlp_in", "mlp_parallel", "mlp_out",
                     "after_block"]
    backbone.refresh_views()
    assert backbone.views[0].block is view.block and backbone.slots[0] is slot  # handles re-read, modules kept


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_final_norms_are_the_ones_the_head_applies(name):
    backbone = create_backbone(name).eval()
    cls = torch.randn(3, 64)
    with torch.no_grad():
        before = backbone.head(cls, project=False)
        for norm in backbone.final_norms():
            torch.nn.init.normal_(norm.weight)
        assert not torch.allclose(backbone.head(cls, project=False), before)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_a_deep_copy_runs_its_own_modules(name):
    import copy

    from adaptvid import build_model

    model = build_model(name, "st-adapter", num_classes=2, num_frames=2, bottleneck=8).eval()
    twin = copy.deepcopy(model)
    assert twin.backbone.views[0].block is not model.backbone.views[0].block
    assert twin.backbone.views[0].block is twin.backbone.tower.get_submodule(
        next(n for n, m in twin.backbone.tower.named_modules() if m is twin.backbone.views[0].block))
    for p in twin.backbone.tower.parameters():
        p.data.zero_()
    video = torch.randn(1, 3, 2, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(twin.encode_video(video), model.encode_video(video))
