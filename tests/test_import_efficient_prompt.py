"""The efficient-prompt importer reproduces the official logits (tests/fixtures/import/efficient-prompt/README.md)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "efficient-prompt"
OPTIONS = {"prefix": 4, "postfix": 3, "tfm_heads": 2}   # the fixture's CLIPrompt arguments


def _state():
    """The official state dict; its (49408, 64) token table is stored as the rows the class names use."""
    state = dict(load_file(FIXTURE / "state_dict.safetensors"))
    rows, index = state.pop("fixture.token_embedding_rows"), state.pop("fixture.token_embedding_index")
    table = torch.zeros(49408, rows.shape[1])
    table[index] = rows
    state["clipmodel.token_embedding.weight"] = table
    return state


def _class_names():
    return json.loads((FIXTURE / "config.json").read_text())["class_names"]


def test_matches_official():
    io = load_file(FIXTURE / "io.safetensors")
    model = import_checkpoint("efficient-prompt", {"state_dict": _state(), "iteration": 1000},
                              class_names=_class_names(), **OPTIONS)
    assert not model.training and model.num_frames == 4
    with torch.no_grad():
        logits = model(io["clip"])
    assert (logits - io["logits"]).abs().max().item() <= 1e-4


def test_missing_and_unexpected_keys_are_named():
    dropped = _state()
    del dropped["temporalModelling.resblocks.0.ln_2.bias"]
    with pytest.raises(CheckpointImportError, match=r"ln_2\.bias"):
        import_checkpoint("efficient-prompt", dropped, class_names=_class_names(), **OPTIONS)
    extra = dict(_state(), **{"promptGate.weight": torch.ones(3)})
    with pytest.raises(CheckpointImportError, match="promptGate"):
        import_checkpoint("efficient-prompt", extra, class_names=_class_names(), **OPTIONS)
