"""ViFi-CLIP: both CLIP towers fine-tuned, 'a photo of a {}.' classifier; bridge and prompt via init_from."""
import pytest
import torch
from safetensors.torch import load_file, save_file

import adaptvid
from adaptvid.checkpoints import WEIGHTS_FILE
from adaptvid.methods.vifi_clip import word_embedding_module
from adaptvid.text import PHOTO_TEMPLATE, TextClassifier, scaled_cosine
from conftest import check_one_training_step, fixed_batch_losses, tiny_video

CLASSES = ["square growing", "disc fading", "red turning blue"]
TEXT_BACKBONES = ("tiny-clip", "tiny-hf-clip")


def _build(backbone="tiny-clip", method="vifi-clip", **options):
    return adaptvid.build_model(backbone, method, class_names=CLASSES, num_frames=4, **options)


def _named(model, prefix):
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_both_towers_train_except_the_word_embeddings(backbone):
    model = _build(backbone)
    assert isinstance(model.head, TextClassifier) and model.head.templates == (PHOTO_TEMPLATE,)
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    table = word_embedding_module(model.text).weight
    assert [p for p in model.parameters() if not p.requires_grad] == [table], frozen
    assert model.text.logit_scale.requires_grad
    # One learning rate for everything: the tower is trained at the new modules' rate.
    assert all(id(p) in model.new_lr_parameters for p in model.backbone.tower.parameters())
    check_one_training_step(model, tiny_video(), torch.tensor([0, 2]))


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_at_init_it_is_zero_shot_clip_with_the_photo_template(backbone):
    model = _build(backbone).eval()
    video = tiny_video()
    with torch.no_grad():
        frames = model.encode_frames(video)                       # (B, T, E): CLS -> ln_post -> proj per frame
        texts = model.text.encode_texts([PHOTO_TEMPLATE.format(name) for name in CLASSES])
        expected = scaled_cosine(frames.mean(dim=1), texts, model.text.logit_scale)
        assert torch.allclose(model(video), expected, atol=1e-5)


def test_text_frozen_with_train_text_false():
    model = _build(train_text=False)
    text_before = {n: p.detach().clone() for n, p in _named(model, "text.").items()}
    assert not any(p.requires_grad for p in text_before.values()) and not model.text.logit_scale.requires_grad
    check_one_training_step(model, tiny_video(), torch.tensor([0, 2]))
    assert all(torch.equal(p, text_before[n]) for n, p in _named(model, "text.").items())


def test_image_tower_frozen_with_train_visual_false():
    model = _build(train_visual=False)
    assert not any(p.requires_grad for p in model.backbone.tower.parameters())
    assert not model.text.logit_scale.requires_grad   # the official text-only mode keeps the temperature
    check_one_training_step(model, tiny_video(), torch.tensor([0, 2]))


def test_training_nothing_is_refused():
    with pytest.raises(ValueError, match="trains nothing"):
        _build(train_text=False, train_visual=False)


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_loss_goes_down_on_a_fixed_batch(backbone):
    model = _build(backbone)
    video, labels = tiny_video(), torch.tensor([0, 2])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = fixed_batch_losses(model, video, labels, steps=8, optimizer=optimizer)
    assert losses[-1] < 0.5 * losses[0], losses


def test_checkpoint_round_trip_keeps_both_trained_towers(tmp_path):
    model = _build()
    check_one_training_step(model, tiny_video(), torch.tensor([0, 2]))
    model.eval().save_adapter(tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS_FILE))
    assert any(n.startswith("backbone.tower.") for n in saved) and "text.logit_scale" in saved
    assert any(n.startswith("text.transformer.") for n in saved)
    loaded = adaptvid.load_model(tmp_path).eval()
    for name, p in loaded.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[name]), name
    with torch.no_grad():
        assert torch.equal(loaded(tiny_video()), model(tiny_video()))


def test_trainable_count_on_vit_b16_is_all_of_clip_but_the_word_embeddings():
    # Official trainers/vificlip.py, USE: both — image encoder 86,192,640 + text transformer, positional
    # embedding, ln_final and projection 38,131,200 + logit scale 1; the 49408 x 512 token table is
    # only read once into a buffer.
    model = adaptvid.build_model("clip", "vifi-clip", class_names=["a"], weights="random")
    trainable, total = adaptvid.count_parameters(model)
    assert trainable == 124_323_841
    assert total - trainable == 49408 * 512


# -- bridge and prompt: init_from --------------------------------------------------------------

@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    """A ViFi-CLIP checkpoint whose towers have moved away from the base weights."""
    torch.manual_seed(0)
    model = _build()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(model(tiny_video()), torch.tensor([0, 2])).backward()
    optimizer.step()
    directory = tmp_path_factory.mktemp("vifi")
    model.save_adapter(directory)
    return directory, {n: p.detach().clone() for n, p in model.named_parameters()}


def test_init_from_loads_the_bridge_towers_into_the_frozen_prompt_model(bridge, tmp_path):
    directory, stage1 = bridge
    model = _build(method="coop,vpt", ctx_tokens=4, vpt_tokens=2)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = adaptvid.checkpoints.init_from(model, directory)
    saved = load_file(str(directory / WEIGHTS_FILE))   # the whole image tower and text tower (but its word table)
    assert report["loaded"] == len(saved) and report["skipped"] == [] and report["loaded_names"] == sorted(saved)
    params = dict(model.named_parameters())
    for name in report["loaded_names"]:
        assert torch.equal(params[name], stage1[name]) and not params[name].requires_grad, name
        assert not torch.equal(params[name], base[name]), name
    # Stage 2 trains the prompts only; its checkpoint records the bridge and load_model repeats it.
    check_one_training_step(model, tiny_video(), torch.tensor([0, 1]), nonzero_grads=False)
    model.eval().save_adapter(tmp_path / "prompts")
    loaded = adaptvid.load_model(tmp_path / "prompts").eval()
    assert loaded.checkpoint_config["init_from"] == str(directory.resolve())
    for name, p in loaded.named_parameters():
        assert torch.equal(p, params[name]), name
    with torch.no_grad():
        assert torch.equal(loaded(tiny_video()), model(tiny_video()))


def test_init_from_refuses_a_checkpoint_without_tower_tensors(tmp_path):
    adapter = adaptvid.build_model("tiny-clip", "st-adapter", num_classes=3, num_frames=4, bottleneck=8)
    adapter.save_adapter(tmp_path)
    with pytest.raises(ValueError, match="no tower or text tensor"):
        adaptvid.checkpoints.init_from(_build(method="coop"), tmp_path)


def test_init_from_refuses_shape_mismatch_and_other_backbones(bridge, tmp_path):
    directory, _ = bridge
    tensors = load_file(str(directory / WEIGHTS_FILE))
    tensors["backbone.tower.proj"] = torch.zeros(3, 3)
    (tmp_path / "bad").mkdir()
    save_file(tensors, str(tmp_path / "bad" / WEIGHTS_FILE))
    (tmp_path / "bad" / "adaptvid.json").write_text((directory / "adaptvid.json").read_text())
    with pytest.raises(ValueError, match="shapes differ"):
        adaptvid.checkpoints.init_from(_build(method="coop"), tmp_path / "bad")
    with pytest.raises(ValueError, match="backbone 'tiny-clip'"):
        adaptvid.checkpoints.init_from(_build("tiny-hf-clip", method="coop"), directory)
