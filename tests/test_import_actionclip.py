"""The actionclip importer (official sallymmx/ActionCLIP checkpoint) against the official model's logits.

Fixture: tests/fixtures/import/actionclip (README.md there says how the official CLIP + visual_prompt
'Transf' produced it)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "actionclip"
CLASSES = ["a", "b", "c", "d", "e"]   # the texts are scored as token ids; names only size the classifier


def official_checkpoint() -> dict:
    """As utils/saving.py writes it (the fusion model wrapped in DataParallel: 'module.' keys)."""
    load = lambda name: {k: v.float() for k, v in load_file(FIXTURE / f"{name}.safetensors").items()}  # noqa: E731
    return {"epoch": 49, "model_state_dict": load("model_state_dict"),
            "fusion_model_state_dict": load("fusion_model_state_dict"), "optimizer_state_dict": {"state": {}}}


def test_imported_actionclip_gives_the_official_logits():
    io = load_file(FIXTURE / "io.safetensors")
    model = import_checkpoint("actionclip", official_checkpoint(), class_names=CLASSES, num_frames=4)
    with torch.no_grad():
        logits = model.text_logits(io["video"].float().transpose(1, 2), input_ids=io["input_ids"])
    assert logits.shape == io["logits"].shape == (2, 5)
    assert (logits - io["logits"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("change, named", [
    ("drop", "blocks.5.ln_2.bias"),   # the adaptvid or the official name
    ("add", "module.transformer.extra_gate"),
])
def test_a_missing_or_unexpected_key_is_an_error_naming_it(change, named):
    ckpt = official_checkpoint()
    fusion = ckpt["fusion_model_state_dict"]
    if change == "drop":
        del fusion["module.transformer.resblocks.5.ln_2.bias"]
    else:
        fusion["module.transformer.extra_gate"] = torch.ones(1)
    with pytest.raises(CheckpointImportError, match=named.replace(".", r"\.")):
        import_checkpoint("actionclip", ckpt, class_names=CLASSES, num_frames=4)
