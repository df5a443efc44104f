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
