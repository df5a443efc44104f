"""The st-adapter importer reproduces the official ST-Adapter logits (tests/fixtures/import/st-adapter/README.md).

Two forms: the official trainer's ``checkpoint-N.pth`` (adapters and ``fc`` only, combined with the user's
backbone: tiny-clip, whose tower the fixture's official model ran on) and the whole ``VisionTransformer``
state dict (its OpenAI-CLIP tower inferred from the tensors)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptvid
from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "st-adapter"
HEADS = 2       # the full-form tower has 2 heads (not width // 64)
FRAMES = 4


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURE / "io.safetensors")


def official_checkpoint() -> dict:
    """What utils.save_model writes: the trainable tensors under 'model', beside the training state."""
    state = load_file(FIXTURE / "method_state.safetensors")
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
    return {"model": state, "optimizer": optimizer, "lr_sched": {"last_epoch": 5}, "loss_scaler": {"scale": 2.0},
            "next_epoch": 12}


def _full_state(placement: str) -> dict:
    state = load_file(FIXTURE / "full_state.safetensors")
    if placement == "mlp":   # the K400 12x384 layout: the same tensors without the pre-attention adapters
        state = {k: v for k, v in state.items() if "adapter_pre_attn" not in k}
    return state


def _logits(model, clip):
    with torch.no_grad():
        return model(clip)


def test_method_only_checkpoint_on_the_users_backbone_matches_official(io):
    model = import_checkpoint("st-adapter", official_checkpoint(), backbone="tiny-clip", num_frames=FRAMES)
    assert not model.training and model.head.out_features == 5 and model.pool == "token-mean"
    adapters = [m for name, m in model.named_modules() if name.endswith("st_adapter")]
    assert len(adapters) == 2 and all(".before_mlp." in n for n, _ in model.named_modules() if n.endswith("st_adapter"))
    assert adapters[0].down.out_features == 32 and adapters[0].conv.kernel_size == (3, 1, 1)
    assert (_logits(model, io["clip"]) - io["logits_method"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("placement, logits", [("attn+mlp", "logits_full"), ("mlp", "logits_full_mlp")])
def test_full_state_dict_matches_official(io, placement, logits):
    model = import_checkpoint("st-adapter", _full_state(placement), heads=HEADS, num_frames=FRAMES)
    points = {n.split(".")[3] for n, _ in model.named_modules() if n.endswith("st_adapter")}
    assert points == ({"before_attn", "before_mlp"} if placement == "attn+mlp" else {"before_mlp"})
    assert (_logits(model, io["clip"]) - io[logits]).abs().max().item() <= 1e-4


def test_method_only_checkpoint_without_a_backbone_says_to_pass_one():
    with pytest.raises(CheckpointImportError, match="backbone='clip'"):
        import_checkpoint("st-adapter", official_checkpoint(), num_frames=FRAMES)


def test_missing_and_unexpected_keys_are_named():
    ckpt = official_checkpoint()
    del ckpt["model"]["transformer.resblocks.1.adapter_pre_mlp.conv.bias"]
    with pytest.raises(CheckpointImportError, match=r"slots\.1\.before_mlp\.st_adapter\.conv\.bias"):
        import_checkpoint("st-adapter", ckpt, backbone="tiny-clip", num_frames=FRAMES)
    ckpt = official_checkpoint()
    ckpt["model"]["transformer.resblocks.0.adapter_pre_mlp.gate"] = torch.ones(3)
    with pytest.raises(CheckpointImportError, match=r"adapter_pre_mlp\.gate"):
        import_checkpoint("st-adapter", ckpt, backbone="tiny-clip", num_frames=FRAMES)
    full = _full_state("attn+mlp")
    del full["transformer.resblocks.1.attn.in_proj_weight"]
    with pytest.raises(CheckpointImportError, match=r"resblocks\.1\.attn\.in_proj_weight"):
        import_checkpoint("st-adapter", full, heads=HEADS, num_frames=FRAMES)


def test_adapters_in_some_blocks_only_are_refused():
    """Official adapter_layers < layers leaves the first blocks without adapters; adaptvid has one in every block."""
    full = {k: v for k, v in _full_state("mlp").items() if not k.startswith("transformer.resblocks.0.adapter")}
    with pytest.raises(CheckpointImportError, match=r"adapters in blocks \[1\] of 2"):
        import_checkpoint("st-adapter", full, heads=HEADS, num_frames=FRAMES)


def test_full_form_import_saves_and_reloads_with_equal_logits(io, tmp_path):
    """The tower has no CLIP projection (the official VisionTransformer has none); the saved folder still reloads."""
    model = import_checkpoint("st-adapter", _full_state("attn+mlp"), heads=HEADS, num_frames=FRAMES,
                              output=tmp_path / "out")
    reloaded = adaptvid.load_model(tmp_path / "out").eval()
    assert torch.equal(_logits(model, io["clip"]), _logits(reloaded, io["clip"]))
