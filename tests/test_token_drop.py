"""--token-drop: FLIP-style random patch-token dropping in training only."""
import pytest
import torch

from adaptvid import build_model
from adaptvid.methods.registry import check_token_drop
from adaptvid.train import TrainConfig
from adaptvid.train.trainer import _set_efficiency


def _tokens(model, video):
    return model.frame_tokens(video)


@pytest.mark.parametrize("backbone", ["tiny-clip", "tiny-hf-clip", "tiny-vit"])
def test_eval_unchanged_and_train_count(backbone):
    model = build_model(backbone, "full", num_classes=3, num_frames=2)
    video = torch.randn(2, 3, 2, 64, 64)
    model.eval()
    with torch.no_grad():
        before = model(video)
    _set_efficiency(model, TrainConfig(token_drop=0.5))
    with torch.no_grad():
        torch.testing.assert_close(model(video), before, rtol=0, atol=0)
        model.train()
        torch.manual_seed(3)
        tokens = _tokens(model, video)
        torch.manual_seed(3)
        again = _tokens(model, video)
    patches = 16   # 64 px / patch 16 -> 4 x 4
    assert tokens.shape == (4, 1 + patches // 2, model.backbone.width)
    torch.testing.assert_close(again, tokens, rtol=0, atol=0)   # reproducible with a seed
    torch.manual_seed(4)
    with torch.no_grad():
        assert not torch.equal(_tokens(model, video), tokens)


def test_kept_tokens_are_the_embedded_ones_per_frame():
    backbone = build_model("tiny-clip", "frozen", num_classes=3).backbone
    x = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    kept = backbone.drop_tokens(x, 0.75)
    assert kept.shape == (2, 1 + 4, 3)
    torch.testing.assert_close(kept[:, 0], x[:, 0])                      # CLS kept first
    for frame in range(2):
        rows = {tuple(r.tolist()) for r in x[frame, 1:]}
        assert all(tuple(r.tolist()) in rows for r in kept[frame, 1:])
        order = kept[frame, 1:, 0]
        assert torch.all(order[1:] > order[:-1])                         # patch order kept


@pytest.mark.parametrize("method", ["frozen", "full", "lora", "vpt"])
def test_methods_train_with_it(method):
    model = build_model("tiny-clip", method, num_classes=3, num_frames=2).train()
    _set_efficiency(model, TrainConfig(token_drop=0.5))
    out = model(torch.randn(2, 3, 2, 64, 64))
    assert out.shape == (2, 3)
    if method != "frozen":
        out.sum().backward()
        assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["st-adapter", "aim", "evl", "side4video", "uniformerv2"])
def test_grid_methods_refuse(method):
    model = build_model("tiny-clip", method, num_classes=3, num_frames=2)
    with pytest.raises(ValueError, match=f"method '{method}'"):
        _set_efficiency(model, TrainConfig(token_drop=0.5))
    check_token_drop([method], 0.0)   # no dropping: nothing to refuse


def test_bad_fraction():
    with pytest.raises(ValueError, match="token_drop"):
        TrainConfig(token_drop=1.0)
