"""The x-clip importer (official microsoft/VideoX X-CLIP .pth) against the official model's logits.

Fixture: tests/fixtures/import/x-clip (README.md there says how the official XCLIP produced it)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "x-clip"


def official_checkpoint() -> dict:
    """As the official trainer saves it: DDP ``module.`` keys under 'model', next to bookkeeping entries."""
    state = {f"module.{k}": v.float() for k, v in load_file(FIXTURE / "state_dict.safetensors").items()}
    return {"model": state, "epoch": 29, "max_accuracy": 81.0}


def test_imported_xclip_gives_the_official_logits():
    io = load_file(FIXTURE / "io.safetensors")
    model = import_checkpoint("x-clip", official_checkpoint())
    video = io["video"].float().transpose(1, 2)   # official (B, T, C, H, W) -> adaptvid (B, C, T, H, W)
    with torch.no_grad():
        logits = model.text_logits(video, input_ids=io["input_ids"])
    assert logits.shape == io["logits"].shape == (2, 5)
    assert (logits - io["logits"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("change, named", [
    ("drop", "message_fc.bias"),
    ("add", "mit.resblocks.0.extra_scale"),
])
def test_a_missing_or_unexpected_key_is_an_error_naming_it(change, named):
    ckpt = official_checkpoint()
    state = ckpt["model"]
    if change == "drop":
        del state["module.visual.transformer.resblocks.1.message_fc.bias"]
    else:
        state["module.mit.resblocks.0.extra_scale"] = torch.ones(64)
    with pytest.raises(CheckpointImportError, match=named.replace(".", r"\.")):
        import_checkpoint("x-clip", ckpt)
