"""Every registered method x every tiny backbone: the properties all methods share.

New methods join automatically; SMALL lists options that keep a method tiny on the test backbones.
"""
import pytest
import torch

import adaptvid
from conftest import TINY_BACKBONES

SMALL = {"st-adapter": {"bottleneck": 16}, "dualpath": {"spatial_frames": 2, "grid": 2}}
FRAMES = 4


def _methods():
    return sorted(adaptvid.list_methods())


CLASS_NAMES = ["square growing", "disc fading", "red turning blue"]


def _build(backbone, method):
    if adaptvid.get_method(method).needs_text and backbone == "tiny-vit":
        pytest.skip(f"{method} uses the CLIP text tower; timm ViTs have none")
    return adaptvid.build_model(backbone, method, class_names=CLASS_NAMES, num_frames=FRAMES, **SMALL.get(method, {}))


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("method", _methods())
def test_method_on_backbone(method, backbone):
    model = _build(backbone, method)
    video = torch.randn(2, 3, FRAMES, 64, 64, generator=torch.Generator().manual_seed(0))
    logits = model(video)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable, "every method trains something"
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"{name} is frozen but got a gradient"
    torch.optim.AdamW(trainable, lr=1e-2).step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"frozen {name} changed"
    model.eval()
    with torch.no_grad():
        assert model.encode_video(video).shape == (2, model.embed_dim)
