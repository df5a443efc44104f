"""The uniformerv2 importer reproduces the official UniFormerV2 logits (tests/fixtures/import/uniformerv2/README.md)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "uniformerv2"
HEADS = 2


def test_matches_official():
    io = load_file(FIXTURE / "io.safetensors")
    model = import_checkpoint("uniformerv2", str(FIXTURE / "model_state.safetensors"), heads=HEADS, num_frames=4)
    assert not model.training and model.head.out_features == 5
    with torch.no_grad():
        logits = model(io["clip"])
    assert (logits - io["logits"]).abs().max().item() <= 1e-4


def test_pyslowfast_wrapper_is_unwrapped():
    """Released .pyth files hold {'epoch', 'model_state', 'optimizer_state', 'cfg'}."""
    state = load_file(FIXTURE / "model_state.safetensors")
    io = load_file(FIXTURE / "io.safetensors")
    model = import_checkpoint("uniformerv2", {"model_state": state}, heads=HEADS, num_frames=4)
    with torch.no_grad():
        assert (model(io["clip"]) - io["logits"]).abs().max().item() <= 1e-4


def test_missing_and_unexpected_keys_are_named():
    state = load_file(FIXTURE / "model_state.safetensors")
    dropped = dict(state)
    del dropped["backbone.transformer.dpe.1.weight"]
    with pytest.raises(CheckpointImportError, match=r"dpe\.1\.weight"):
        import_checkpoint("uniformerv2", dropped, heads=HEADS, num_frames=4)
    extra = dict(state, **{"backbone.transformer.extra_gate": torch.ones(3)})
    with pytest.raises(CheckpointImportError, match="extra_gate"):
        import_checkpoint("uniformerv2", extra, heads=HEADS, num_frames=4)


def test_temporal_downsampling_is_refused():
    state = dict(load_file(FIXTURE / "model_state.safetensors"))
    conv1 = state["backbone.conv1.weight"]
    state["backbone.conv1.weight"] = conv1.repeat(1, 1, 3, 1, 1)   # the SSv2 configs' 3-frame kernel
    with pytest.raises(CheckpointImportError, match="TEMPORAL_DOWNSAMPLE"):
        import_checkpoint("uniformerv2", state, heads=HEADS, num_frames=4)
