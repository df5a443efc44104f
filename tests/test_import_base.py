"""The importer framework: safe reading, unwrapping, strict keys, full-form save/reload, the CLI."""
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptvid
from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint, list_formats, read_checkpoint
from adaptvid.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "import"
ZEROI2V = FIXTURES / "zeroi2v"


class NotATensor:   # any class: unpickling it would import and run code
    pass


def test_wrappers_and_ddp_prefixes_are_removed():
    weight = torch.ones(2)
    for wrapped in ({"model": {"module.a": weight}, "optimizer": {}, "epoch": 3},
                    {"state_dict": {"a": weight}, "meta": {"x": 1}},
                    {"model_state": {"a": weight}, "cfg": "text"},
                    {"module.a": weight}):
        assert list(read_checkpoint(wrapped)) == ["a"]


def test_a_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "released.pth"
    torch.save({"model": {"a": torch.ones(1)}, "config": NotATensor()}, path)
    with pytest.raises(CheckpointImportError, match="cannot be loaded safely.*never unpickles code"):
        read_checkpoint(path)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"a": NotATensor()}))
    with pytest.raises(CheckpointImportError, match="safely"):
        read_checkpoint(evil)


def test_no_tensors_and_unknown_format_are_errors(tmp_path):
    with pytest.raises(CheckpointImportError, match="holds no tensors"):
        read_checkpoint({"epoch": 1})
    with pytest.raises(CheckpointImportError, match="unknown checkpoint format 'nope'; known: .*zeroi2v"):
        import_checkpoint("nope", {"a": torch.ones(1)})


def test_an_unexpected_official_key_is_named():
    state = load_file(ZEROI2V / "train_state.safetensors")
    state["cls_head.extra_layer.weight"] = torch.ones(3)
    with pytest.raises(CheckpointImportError, match="cls_head.extra_layer.weight"):
        import_checkpoint("zeroi2v", state, heads=2)


def test_a_full_form_import_saves_and_reloads_offline_with_equal_logits(tmp_path):
    clip = load_file(ZEROI2V / "io.safetensors")["clip"]
    model = import_checkpoint("zeroi2v", str(ZEROI2V / "train_state.safetensors"), heads=2, output=tmp_path / "out")
    reloaded = adaptvid.load_model(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(model(clip), reloaded(clip))
    assert reloaded.backbone.name.startswith("open_clip-dir:")
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_checkpoint("zeroi2v", str(ZEROI2V / "train_state.safetensors"), heads=2, output=tmp_path / "out")


def test_the_cli_lists_formats_and_writes_a_folder(tmp_path, capsys):
    assert main(["import", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in list_formats())
    out = tmp_path / "ckpt"
    assert main(["import", "--format", "zeroi2v", str(ZEROI2V / "train_state.safetensors"), "--heads", "2",
                 "--output", str(out)]) == 0
    assert (out / "adaptvid.json").is_file() and (out / "tower" / "open_clip_model.safetensors").is_file()
    assert main(["import", "--format", "zeroi2v", str(ZEROI2V / "train_state.safetensors"), "--heads", "2",
                 "--output", str(out)]) == 2   # exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_an_option_the_format_never_reads_is_refused():
    """A misspelt option (`scael=`) or one meant for another format must not be silently ignored."""
    with pytest.raises(CheckpointImportError, match=r"\['scael'\] mean nothing to a zeroi2v"):
        import_checkpoint("zeroi2v", str(ZEROI2V / "train_state.safetensors"), heads=2, scael=1.0)
