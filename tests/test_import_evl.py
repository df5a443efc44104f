"""The evl importer (official OpenGVLab/efficient-video-recognition checkpoint-N.pth) against the official logits.

Fixture: tests/fixtures/import/evl (README.md there says how the official EVLTransformer produced it). The
released form (frozen backbone) holds the decoder and head only, combined with the user's backbone (here
tiny-clip, whose weights the official model's backbone was loaded with); the finetune form holds the backbone
too, with a non-zero patch-embedding bias that the importer folds into the position embedding."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "evl"
HEADS = 2   # the finetune fixture's backbone heads (not width // 64)


def official_checkpoint(form: str) -> dict:
    """As the official trainer saves it: DDP ``module.`` keys under 'model', next to the optimizer state."""
    state = {f"module.{k}": v.float() for k, v in load_file(FIXTURE / f"{form}_state_dict.safetensors").items()}
    return {"model": state, "optimizer": {"state": {}}, "next_step": 20000}


def _logits(model) -> torch.Tensor:
    io = load_file(FIXTURE / "io.safetensors")
    with torch.no_grad():
        return model(io["clip"].float())


def test_released_form_with_the_users_backbone_gives_the_official_logits():
    model = import_checkpoint("evl", official_checkpoint("frozen"), backbone="tiny-clip")
    expected = load_file(FIXTURE / "io.safetensors")["logits_frozen"]
    assert model.decoder.num_layers == 2 and model.num_frames == 4 and model.head.out_features == 5
    assert (_logits(model) - expected).abs().max().item() <= 1e-4


def test_finetune_form_brings_its_backbone_and_folds_the_patch_bias():
    ckpt = official_checkpoint("finetune")
    assert ckpt["model"]["module.backbone.patch_embed.proj.bias"].abs().max() > 0.05   # a bias to fold
    model = import_checkpoint("evl", ckpt, heads=HEADS)
    expected = load_file(FIXTURE / "io.safetensors")["logits_finetune"]
    assert model.backbone.depth == 3 and model.decoder.layers == [1, 2]   # the last 2 of 3 blocks, as official
    assert (_logits(model) - expected).abs().max().item() <= 1e-4


def test_released_form_without_a_backbone_says_to_pass_one():
    with pytest.raises(CheckpointImportError, match="backbone"):
        import_checkpoint("evl", official_checkpoint("frozen"))


@pytest.mark.parametrize("form, change, named", [
    ("frozen", "drop", "decoder.temporal_cross_attention.1.w_next"),
    ("frozen", "add", "decoder.extra_gate"),
    ("finetune", "drop", "backbone.blocks.2.attn.v_proj.weight"),
    ("finetune", "add", "backbone.blocks.0.ls1"),
])
def test_a_missing_or_unexpected_key_is_an_error_naming_it(form, change, named):
    ckpt = official_checkpoint(form)
    state = ckpt["model"]
    if change == "drop":   # the error names the adaptvid tensor left without a value, or the official key
        official = {"decoder.temporal_cross_attention.1.w_next": "decoder.cross_attention.1.w2"}.get(named, named)
        del state[f"module.{official}"]
    else:
        state[f"module.{named}"] = torch.ones(64)
    with pytest.raises(CheckpointImportError, match=named.replace(".", r"\.")):
        import_checkpoint("evl", ckpt, backbone="tiny-clip", heads=HEADS)


def test_a_decoder_narrower_than_the_features_is_refused():
    ckpt = official_checkpoint("frozen")
    state = ckpt["model"]
    for i in range(2):
        for p in "qkv":
            state[f"module.decoder.decoder_layers.{i}.attn.{p}_proj.weight"] = torch.zeros(32, 64)
    with pytest.raises(CheckpointImportError, match="decoder_qkv_dim"):
        import_checkpoint("evl", ckpt, backbone="tiny-clip")


def test_the_written_checkpoint_reloads_to_the_same_logits(tmp_path):
    import adaptvid

    import_checkpoint("evl", official_checkpoint("finetune"), heads=HEADS, output=tmp_path / "evl")
    model = adaptvid.load_model(tmp_path / "evl").eval()
    expected = load_file(FIXTURE / "io.safetensors")["logits_finetune"]
    assert (_logits(model) - expected).abs().max().item() <= 1e-4
