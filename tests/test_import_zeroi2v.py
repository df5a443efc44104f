"""The zeroi2v importer reproduces the official ZeroI2V logits (tests/fixtures/import/zeroi2v/README.md)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptvid
from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "zeroi2v"
HEADS = 2   # the fixture's tower has 2 heads (not width // 64)


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURE / "io.safetensors")


def _logits(model, clip):
    with torch.no_grad():
        return model(clip)


def test_training_form_matches_official(io):
    model = import_checkpoint("zeroi2v", str(FIXTURE / "train_state.safetensors"), heads=HEADS)
    assert not model.training
    assert model.num_frames == 4 and model.head.out_features == 5
    assert (_logits(model, io["clip"]) - io["logits_train"]).abs().max().item() <= 1e-4


def test_reparameterised_form_matches_official_and_merges(io):
    model = import_checkpoint("zeroi2v", str(FIXTURE / "merged_state.safetensors"), heads=HEADS)
    assert (_logits(model, io["clip"]) - io["logits_merged"]).abs().max().item() <= 1e-4
    adaptvid.merge(model)
    assert not [name for name, _ in model.named_parameters() if ".slots." in name]   # no adapter left
    assert (_logits(model, io["clip"]) - io["logits_merged"]).abs().max().item() <= 1e-4


def test_training_form_merges_to_the_official_reparameterised_weights():
    """adaptvid.merge on the training form gives the tower tools/weight_reparam.py writes."""
    model = import_checkpoint("zeroi2v", str(FIXTURE / "train_state.safetensors"), heads=HEADS)
    adaptvid.merge(model)
    merged = load_file(FIXTURE / "merged_state.safetensors")
    tower = model.backbone.tower.state_dict()
    for key in ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "mlp.c_fc.weight",
                "mlp.c_proj.bias"):
        official = merged[f"backbone.transformer.resblocks.1.{key}"]
        assert torch.allclose(tower[f"transformer.resblocks.1.{key}"], official, atol=1e-5), key


def test_missing_and_unexpected_keys_are_named():
    state = load_file(FIXTURE / "train_state.safetensors")
    dropped = dict(state)
    del dropped["backbone.transformer.resblocks.1.S_Adapter.D_fc2.weight"]
    with pytest.raises(CheckpointImportError, match="s_adapter.up.weight|S_Adapter.D_fc2.weight"):
        import_checkpoint("zeroi2v", dropped, heads=HEADS)
    extra = dict(state, **{"backbone.transformer.resblocks.0.extra_scale": torch.ones(3)})
    with pytest.raises(CheckpointImportError, match="extra_scale"):
        import_checkpoint("zeroi2v", extra, heads=HEADS)
