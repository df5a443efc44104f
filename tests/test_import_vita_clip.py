"""The vita-clip importer (official TalalWasim/Vita-CLIP checkpoint-N.pth) against the official model's logits.

Fixture: tests/fixtures/import/vita-clip (README.md there says how the official VitaCLIP produced it). The
49408-row word-embedding table is not stored: it is regenerated here from the seed the fixture used. The
official patch embedding carries a (non-zero, random) bias that adaptvid's bias-free conv1 does not have:
the importer folds it into the position embedding of the patch tokens."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "vita-clip"
CLASSES = json.loads((FIXTURE / "config.json").read_text())["class_names"]
HEADS = 2   # the fixture's image tower: 2 heads of 32 (not width // 64); the text tower has the default 1


def official_checkpoint() -> dict:
    """As the official trainer saves it: DDP ``module.`` keys under 'model', next to the optimizer state."""
    state = {f"module.{k}": v.float() for k, v in load_file(FIXTURE / "state_dict.safetensors").items()}
    table = 0.02 * torch.randn(49408, 64, generator=torch.Generator().manual_seed(3))
    state["module.textual.token_embedding.weight"] = table.half().float()
    return {"model": state, "optimizer": {"state": {}}, "next_step": 30000}


def _max_diff(ckpt) -> float:
    io = load_file(FIXTURE / "io.safetensors")
    model = import_checkpoint("vita-clip", ckpt, class_names=CLASSES, heads=HEADS)
    with torch.no_grad():
        logits = model(io["video"].float())
    assert logits.shape == io["logits"].shape == (2, 5)
    return (logits - io["logits"]).abs().max().item()


def test_imported_vita_clip_gives_the_official_logits():
    ckpt = official_checkpoint()
    assert ckpt["model"]["module.visual.patch_embed.proj.bias"].abs().max() > 0.05   # a bias to fold
    assert _max_diff(ckpt) <= 1e-4


def test_the_patch_bias_matters_so_folding_it_is_tested():
    """Without the bias the logits move far beyond the tolerance: the exact match above needs the fold."""
    ckpt = official_checkpoint()
    ckpt["model"]["module.visual.patch_embed.proj.bias"].zero_()
    assert _max_diff(ckpt) > 1e-3


def test_options_read_from_the_tensors():
    model = import_checkpoint("vita-clip", official_checkpoint(), class_names=CLASSES, heads=HEADS)
    tokens = model.backbone.slots[1].attn_tokens["vita_clip"]
    assert model.num_frames == 4 and tokens.global_prompts.shape == (8, 64)
    assert tokens.local_prompts.shape == (1, 4, 64) and tokens.summary_attn is not None
    assert model.head.prompt.ctx.shape == (5, 8, 64)
    assert not model.training


def test_the_official_cls_proj_is_loaded_frozen_as_the_official_recipe():
    """The checkpoint's random cls_proj goes into the frozen module's buffers: fine-tuning the import trains
    exactly what a vita-clip model built with the same options trains."""
    from adaptvid import build_model

    ckpt = official_checkpoint()
    model = import_checkpoint("vita-clip", ckpt, class_names=CLASSES, heads=HEADS)
    assert model.methods[0][1].vita_train_cls_proj is False
    assert not any("cls_proj" in n for n, _ in model.named_parameters())
    for i in range(2):
        tokens = model.backbone.slots[i].attn_tokens["vita_clip"]
        for kind in ("weight", "bias"):
            official = ckpt["model"][f"module.visual.blocks.{i}.cls_proj.{kind}"]
            assert torch.equal(getattr(tokens.cls_proj, kind), official)
    native = build_model("tiny-clip", "vita-clip", class_names=CLASSES, num_frames=4)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n, p in native.named_parameters() if p.requires_grad}


def test_the_written_checkpoint_reloads_to_the_same_logits(tmp_path):
    import adaptvid

    io = load_file(FIXTURE / "io.safetensors")
    ckpt = official_checkpoint()
    import_checkpoint("vita-clip", ckpt, class_names=CLASSES, heads=HEADS, output=tmp_path / "vita")
    saved = load_file(tmp_path / "vita" / "adapter.safetensors")
    official = ckpt["model"]["module.visual.blocks.1.cls_proj.weight"]
    assert torch.equal(saved["backbone.slots.1.attn_tokens.vita_clip.cls_proj.weight"], official)   # stored
    model = adaptvid.load_model(tmp_path / "vita").eval()
    assert not any("cls_proj" in n for n, _ in model.named_parameters())   # and still frozen after reloading
    with torch.no_grad():
        logits = model(io["video"].float())
    assert (logits - io["logits"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("change, named", [
    ("drop", "summary_attn.v_proj.bias"),
    ("add", "visual.blocks.0.extra_gate"),
    ("drop-text", "no ['prompt_learner.ctx'"),
])
def test_a_missing_or_unexpected_key_is_an_error_naming_it(change, named):
    ckpt = official_checkpoint()
    state = ckpt["model"]
    if change == "drop":
        del state["module.visual.blocks.1.summary_attn_layer.v_proj.bias"]
    elif change == "add":
        state["module.visual.blocks.0.extra_gate"] = torch.ones(64)
    else:   # a zero-shot-evaluation model (no text prompt learning)
        del state["module.prompt_learner.ctx"]
    with pytest.raises(CheckpointImportError, match=re.escape(named)):
        import_checkpoint("vita-clip", ckpt, class_names=CLASSES, heads=HEADS)

