"""The vifi-clip importer (official muzairkhattak/ViFi-CLIP .pth) against the official model's logits.

Fixture: tests/fixtures/import/vifi-clip (README.md there says how the official ViFiCLIP produced it). The
checkpoint lacks CLIP's word-embedding table (ViFi-CLIP never trains or saves it): the user's base CLIP
(here tiny-clip, whose table the fixture's official model used) supplies it."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "vifi-clip"
CLASSES = json.loads((FIXTURE / "config.json").read_text())["class_names"]


def official_checkpoint() -> dict:
    state = {k: v.float() for k, v in load_file(FIXTURE / "state_dict.safetensors").items()}
    return {"model": state, "epoch": 9, "max_accuracy": 70.0}


def test_imported_vifi_clip_gives_the_official_logits():
    io = load_file(FIXTURE / "io.safetensors")
    model = import_checkpoint("vifi-clip", official_checkpoint(), backbone="tiny-clip", class_names=CLASSES,
                              num_frames=4)
    with torch.no_grad():
        logits = model(io["video"].float().transpose(1, 2))
    assert logits.shape == io["logits"].shape == (2, 5)
    assert (logits - io["logits"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("change, named", [
    ("drop", "ln_post.bias"),
    ("add", "text_encoder.extra_gate"),
    ("prompt", "bridge and prompt"),
])
def test_a_missing_unexpected_or_unsupported_key_is_an_error_naming_it(change, named):
    ckpt = official_checkpoint()
    state = ckpt["model"]
    if change == "drop":
        del state["image_encoder.ln_post.bias"]
    elif change == "add":
        state["text_encoder.extra_gate"] = torch.ones(1)
    else:
        state["image_encoder.VPT"] = torch.zeros(8, 64)
    with pytest.raises(CheckpointImportError, match=named.replace(".", r"\.")):
        import_checkpoint("vifi-clip", ckpt, backbone="tiny-clip", class_names=CLASSES, num_frames=4)
