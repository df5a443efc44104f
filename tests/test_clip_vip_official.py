"""clip-vip against the official CLIP-ViP vision tower's video embedding.

Fixture: tests/fixtures/clip-vip (README.md there says how the official ``CLIPModel`` of microsoft/XPretrain
``CLIP-ViP/src/modeling/CLIP_ViP.py`` produced it). Its tower has tiny-hf-clip's shape, so the test builds
clip-vip on tiny-hf-clip and overwrites every image-tower weight, the projection, the added proxies and the
temporal embedding with the official ones (by name; a key left over or not filled fails). The official output
is ``get_image_features``: the first proxy after the final norm, projected, which is adaptvid's
``encode_video``."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptvid

FIXTURE = Path(__file__).parent / "fixtures" / "clip-vip"
CONFIG = json.loads((FIXTURE / "config.json").read_text())
TOLERANCE = 1e-5

# official name -> adaptvid name; the tower's own weights keep their transformers names under backbone.tower
OFFICIAL_TO_ADAPTVID = {
    "vision_model.embeddings.added_cls": "backbone.before_pre_norm.clip_vip.added_proxy_tokens",
    "vision_model.embeddings.temporal_embedding": "backbone.before_pre_norm.clip_vip.temporal_embedding",
}


def adaptvid_names(official: dict) -> dict:
    return {OFFICIAL_TO_ADAPTVID.get(k, "backbone.tower." + k): v.float() for k, v in official.items()}


def official_model(mode: str):
    settings = CONFIG["adaptvid"]
    model = adaptvid.build_model(settings["backbone"], "clip-vip", num_frames=settings["num_frames"],
                                 vip_proxies=settings["vip_proxies"], vip_attention=mode)
    state = adaptvid_names(load_file(FIXTURE / "state_dict.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == []
    # what stays unfilled is the text side only (a model without classes keeps CLIP's text tower)
    assert [k for k in missing if not k.startswith("text.")] == []
    return model.eval()


def embed(model, video: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_video(video.float().transpose(1, 2))   # official (B, T, C, H, W) -> (B, C, T, H, W)


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURE / "io.safetensors")


@pytest.mark.parametrize("mode", ["split", "masked"])
@pytest.mark.parametrize("clip", ["video", "video_6"])   # video_6: 6 frames, the 4-entry temporal table resized
def test_the_video_embedding_is_the_official_one(mode, clip, io):
    got = embed(official_model(mode), io[clip])
    want = io[clip + "_embedding"]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("part", ["temporal_embedding", "added_proxy_tokens"])
def test_the_official_temporal_embedding_and_proxies_matter(part, io):
    """Without them the output is far from the official one, so the equality above is not vacuous."""
    model = official_model("split")
    with torch.no_grad():
        getattr(model.backbone.before_pre_norm["clip_vip"], part).zero_()
    assert (embed(model, io["video"]) - io["video_embedding"]).abs().max().item() > 1e-3
