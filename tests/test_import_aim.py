"""The aim importer reproduces the official AIM logits (tests/fixtures/import/aim/README.md).

The fixture's tensors are one official ``ViT_CLIP`` + ``I3DHead`` model in mmaction's layout with two temporal
adapters (the SSv2 config, ``adapter_scale=1``); without ``T_Adapter_in`` they are the layout of every released
checkpoint (K400 / K700 / Diving-48 configs: one temporal adapter, ``adapter_scale=0.5``), run by the official
model as well."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "aim"
HEADS = 2   # the fixture's tower has 2 heads (not width // 64)


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURE / "io.safetensors")


def ssv2_state() -> dict:
    return load_file(FIXTURE / "state.safetensors")


def k400_state() -> dict:
    return {k: v for k, v in ssv2_state().items() if "T_Adapter_in" not in k}


def _logits(model, clip):
    with torch.no_grad():
        return model(clip)


def _mlp_scales(model):
    return {m.scale for name, m in model.named_modules() if name.endswith("aim_mlp")}


def test_mmaction_checkpoint_with_one_temporal_adapter_matches_official(io):
    ckpt = {"meta": {"mmaction_version": "0.20.0", "config": "..."}, "state_dict": k400_state()}
    model = import_checkpoint("aim", ckpt, heads=HEADS)
    assert not model.training and model.num_frames == 4 and model.head.out_features == 5
    assert _mlp_scales(model) == {0.5}
    assert not [n for n, _ in model.named_modules() if n.endswith("adapter_in")]
    assert (_logits(model, io["clip"]) - io["logits_k400"]).abs().max().item() <= 1e-4


def test_two_temporal_adapters_take_the_ssv2_scale_and_match_official(io):
    model = import_checkpoint("aim", {"state_dict": ssv2_state()}, heads=HEADS)
    assert _mlp_scales(model) == {1.0}
    assert (_logits(model, io["clip"]) - io["logits_ssv2"]).abs().max().item() <= 1e-4


def test_the_scale_option_is_used(io):
    """adapter_scale is not in the tensors: the wrong one gives other logits, the option fixes it."""
    wrong = import_checkpoint("aim", ssv2_state(), heads=HEADS, scale=0.5)
    assert _mlp_scales(wrong) == {0.5}
    assert (_logits(wrong, io["clip"]) - io["logits_ssv2"]).abs().max().item() > 1e-3


def test_a_checkpoint_without_its_clip_weights_is_an_error_naming_them():
    """The AIM repo's SSv2 30-40 % bug was CLIP weights silently not loaded; here a missing tower tensor is named."""
    state = k400_state()
    del state["backbone.transformer.resblocks.1.attn.in_proj_weight"]
    with pytest.raises(CheckpointImportError, match=r"resblocks\.1\.attn\.in_proj_weight"):
        import_checkpoint("aim", state, heads=HEADS)


def test_missing_and_unexpected_keys_are_named():
    state = k400_state()
    del state["backbone.transformer.resblocks.1.S_Adapter.D_fc2.bias"]
    with pytest.raises(CheckpointImportError, match=r"slots\.1\.attn_branch\.aim_spatial\.adapter\.up\.bias"):
        import_checkpoint("aim", state, heads=HEADS)
    state = dict(k400_state(), **{"backbone.transformer.resblocks.0.T_Adapter.gate": torch.ones(3)})
    with pytest.raises(CheckpointImportError, match=r"T_Adapter\.gate"):
        import_checkpoint("aim", state, heads=HEADS)
    state = dict(k400_state(), **{"cls_head.fc_extra.weight": torch.ones(3)})
    with pytest.raises(CheckpointImportError, match=r"cls_head\.fc_extra\.weight"):
        import_checkpoint("aim", state, heads=HEADS)


def test_a_checkpoint_without_aim_adapters_is_refused():
    state = {k: v for k, v in k400_state().items() if "_Adapter" not in k}
    with pytest.raises(CheckpointImportError, match="no AIM adapters"):
        import_checkpoint("aim", state, heads=HEADS)


def test_the_cli_passes_format_options(tmp_path, capsys):
    """`adaptvid import --option scale=1.0`: the option the tensors cannot show reaches the format."""
    import json

    from adaptvid.checkpoints import load_model
    from adaptvid.cli import main

    source = tmp_path / "vit_l_clip_ssv2.pth"
    torch.save({"state_dict": k400_state()}, source)
    out = tmp_path / "imported"
    assert main(["import", "--format", "aim", str(source), "--heads", str(HEADS), "--option", "scale=1.0",
                 "--output", str(out)]) == 0
    assert json.loads((out / "adaptvid.json").read_text())["methods"][0]["config"]["scale"] == 1.0
    assert _mlp_scales(load_model(out)) == {1.0}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["import", "--format", "aim", str(source), "--option", "scale", "--output", str(tmp_path / "x")])
