"""The clip4clip importer (official ArrowLuo/CLIP4Clip ``pytorch_model.bin.<epoch>``) against the official
similarity logits (``CLIP4Clip.get_similarity_logits``).

Fixture: tests/fixtures/import/clip4clip (README.md there says how the official CLIP4Clip produced it)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from adaptvid.checkpoints.importers import CheckpointImportError, import_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "import" / "clip4clip"
HEADERS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
FRAMES = 4


def official_checkpoint(sim_header: str) -> dict:
    """``CLIP4Clip.state_dict()`` as the trainer saves it: CLIP under ``clip.*`` and the header's modules."""
    state = {f"clip.{k}": v for k, v in load_file(FIXTURE / "clip.safetensors").items()}
    if sim_header != "meanP":
        state.update(load_file(FIXTURE / f"{sim_header}_head.safetensors"))
    return state


def similarity(model, io, frame_mask=None):
    """The (texts, videos) similarity matrix the retrieval task scores, with an optional (videos, T) frame mask."""
    video = io["video"].float().transpose(1, 2)          # (B, T, C, H, W) -> (B, C, T, H, W)
    frames = model.encode_frames(video)
    texts = model.text(io["input_ids"])
    header = model.aggregator
    if header.text_conditioned:
        return header.score(frames, texts, frame_mask=frame_mask)
    videos = header(frames, frame_mask)
    return model.text.logit_scale.exp() * F.normalize(texts, dim=-1) @ F.normalize(videos, dim=-1).t()


@pytest.mark.parametrize("sim_header", HEADERS)
def test_imported_clip4clip_gives_the_official_similarity_logits(sim_header):
    io = load_file(FIXTURE / "io.safetensors")
    model = import_checkpoint("clip4clip", official_checkpoint(sim_header), num_frames=FRAMES)
    assert model.aggregator.name == sim_header
    with torch.no_grad():
        full = similarity(model, io)
        masked = similarity(model, io, io["padded_mask"])
        logits = model.text_logits(io["video"].float().transpose(1, 2), input_ids=io["input_ids"])
    expected, expected_masked = io[f"logits_{sim_header}"], io[f"logits_{sim_header}_masked"]
    assert full.shape == expected.shape == (3, 2)
    assert (full - expected).abs().max().item() <= 1e-4
    assert (masked - expected_masked).abs().max().item() <= 1e-4    # padded frames: the official video_mask
    assert (logits.t() - expected).abs().max().item() <= 1e-4       # model.text_logits: the same scores
    assert (expected - expected_masked).abs().max().item() > 1e-2   # the mask matters in the fixture


def test_the_header_options_are_read_from_the_tensors():
    model = import_checkpoint("clip4clip", official_checkpoint("tightTransf"), num_frames=FRAMES)
    assert len(model.aggregator.blocks) == 3 and model.text.depth == 2   # cross_num_hidden_layers 3 > text depth
    assert import_checkpoint("clip4clip", official_checkpoint("seqTransf"), num_frames=FRAMES).aggregator.name == "seqTransf"


@pytest.mark.parametrize("sim_header, change, named", [
    ("seqTransf", "drop", "blocks.2.ln_2.bias"),                 # reported under adaptvid's name
    ("tightTransf", "drop", "cross.pooler.dense.weight"),
    ("tightTransf", "add", "cross.embeddings.token_type_embeddings.weight"),
    ("meanP", "add", "clip.visual.extra_gate"),
])
def test_a_missing_or_unexpected_key_is_an_error_naming_it(sim_header, change, named):
    state = official_checkpoint(sim_header)
    if change == "drop":
        del state[{"blocks.2.ln_2.bias": "transformerClip.resblocks.2.ln_2.bias"}.get(named, named)]
    else:
        state[named] = torch.ones(1)
    with pytest.raises(CheckpointImportError, match=named.replace(".", r"\.")):
        import_checkpoint("clip4clip", state, num_frames=FRAMES)


def test_a_checkpoint_without_clip_is_refused():
    state = {k: v for k, v in official_checkpoint("seqTransf").items() if not k.startswith("clip.")}
    with pytest.raises(CheckpointImportError, match="clip.visual.conv1.weight"):
        import_checkpoint("clip4clip", state, num_frames=FRAMES)
