"""The CLIP text side: tokenizers, text towers equal to the libraries', the text classifier, templates."""
import gzip

import pytest
import torch
import torch.nn.functional as F

import adaptvid
from adaptvid.backbones import Slot
from adaptvid.backbones.base import run_block
from adaptvid.text import ClipBpeTokenizer, read_templates
from conftest import tiny_video

CLIP_BACKBONES = ("tiny-clip", "tiny-hf-clip")
NAMES = ["square growing", "square shrinking", "disc fading"]
SENTENCES = ["a video of square growing.", "disc", "a person is turning red to blue very slowly, then fast."]


def _model(backbone, **kwargs):
    return adaptvid.build_model(backbone, "frozen", class_names=NAMES, num_frames=4, **kwargs)


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_text_tower_equals_the_library_on_texts_of_different_lengths(backbone):
    text = _model(backbone).use_text()
    ids, mask = text.tokenize(SENTENCES)
    assert ids.shape == mask.shape == (3, text.context_length)
    assert mask.sum(dim=1).tolist() == [len(ClipBpeTokenizer()(SENTENCES).ids[i].nonzero()) for i in range(3)]
    ours = text(ids, mask)
    assert ours.shape == (3, text.embed_dim)
    assert torch.equal(ours, text.library_encode(ids, mask))
    assert not any(p.requires_grad for p in text.parameters())


def _clip_bpe_tokenizer():
    """A transformers CLIPTokenizer built from the BPE merges open_clip ships (the hub is unreachable)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges)


def test_transformers_folder_round_trip_with_its_tokenizer(tmp_path):
    """A CLIPModel + tokenizer saved to a folder load back through hf:<folder>; ids match open_clip's BPE."""
    original = _model("tiny-hf-clip")
    clip = original.backbone.text.model
    clip.save_pretrained(tmp_path)
    _clip_bpe_tokenizer().save_pretrained(tmp_path)
    loaded = adaptvid.build_model(f"hf:{tmp_path}", "frozen", class_names=NAMES, num_frames=4)
    text = loaded.use_text()
    assert type(text.tokenizer).__name__ == "HFTokenizer"
    ids, mask = text.tokenize(SENTENCES)
    reference = ClipBpeTokenizer(context_length=text.context_length)(SENTENCES)
    assert torch.equal(mask, reference.mask)
    assert torch.equal(ids * mask, reference.ids * reference.mask)      # padding ids differ, real tokens do not
    assert torch.allclose(text(ids, mask), original.use_text()(*reference), atol=1e-6)


def test_open_clip_weights_file_round_trip(tmp_path):
    original = _model("tiny-clip")
    path = tmp_path / "tiny.pt"
    torch.save(original.backbone.text.model.state_dict(), path)
    loaded = _model("tiny-clip", weights=str(path))
    ids, mask = original.use_text().tokenize(SENTENCES)
    assert torch.equal(loaded.use_text()(ids, mask), original.use_text()(ids, mask))


@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_text_classifier_logits_are_the_scaled_cosine_of_template_means(backbone):
    model = _model(backbone).eval()
    templates = ("a video of {}.", "{}")
    model.set_text_classifier(templates)
    video = tiny_video()
    text = model.text
    with torch.no_grad():
        per_class = []
        for name in NAMES:
            e = F.normalize(text.encode_texts([t.format(name) for t in templates]), dim=-1)
            per_class.append(F.normalize(e.mean(dim=0), dim=-1))
        v = F.normalize(model.encode_video(video), dim=-1)
        expected = text.logit_scale.exp() * v @ torch.stack(per_class).t()
        assert torch.allclose(model(video), expected, atol=1e-5)
        assert model(video).shape == (2, len(NAMES))


def test_class_embeddings_are_cached_until_a_trained_text_tower_changes():
    model = _model("tiny-clip")
    model.set_text_classifier()
    first = model.head.class_embeddings()
    assert model.head.class_embeddings() is first                 # frozen text: encoded once
    model.text.ln_final.requires_grad_(True)
    with torch.no_grad():
        cached = model.head.class_embeddings()
        assert model.head.class_embeddings() is cached            # trainable but unchanged: still cached in eval
        model.text.ln_final.bias.add_(0.5)                        # an optimiser step changes it in place
        changed = model.head.class_embeddings()
    assert changed is not cached and not torch.allclose(changed, cached)
    assert model.head.class_embeddings().requires_grad            # in training it is re-encoded with a graph


def test_text_logits_from_texts_and_from_pre_tokenised_ids_agree():
    model = _model("tiny-hf-clip").eval()
    video = tiny_video()
    ids, mask = model.use_text().tokenize(SENTENCES)
    with torch.no_grad():
        by_text = model.text_logits(video, SENTENCES)
        by_ids = model.text_logits(video, input_ids=ids, attention_mask=mask)
    assert by_text.shape == (2, 3) and torch.equal(by_text, by_ids)
    with pytest.raises(ValueError, match="either texts"):
        model.text_logits(video)


def test_text_side_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no text tower"):
        _model("tiny-vit").use_text()
    with pytest.raises(ValueError, match="class names"):
        adaptvid.build_model("tiny-clip", "frozen", num_classes=3).set_text_classifier()
    with pytest.raises(ValueError, match="project=True"):
        _model("tiny-clip", project=False).set_text_classifier()
    with pytest.raises(ValueError, match="2 class names"):
        adaptvid.build_model("tiny-clip", "frozen", num_classes=3, class_names=["a", "b"])
    bad = tmp_path / "templates.txt"
    bad.write_text("# video prompts\na video of {}.\na video\n")
    with pytest.raises(ValueError, match=r"templates.txt:3: .*exactly one \{\}"):
        read_templates(bad)
    bad.write_text("a clip of {}.\n\n{}\n")
    assert read_templates(bad) == ("a clip of {}.", "{}")


def test_class_names_are_saved_and_restore_the_text_classifier_input(tmp_path):
    model = _model("tiny-clip")
    model.save_adapter(tmp_path)
    assert adaptvid.load_model(tmp_path).class_names == NAMES


def test_attn_tokens_are_attended_to_and_dropped_after_the_attention():
    backbone = adaptvid.create_backbone("tiny-clip")
    view, x = backbone.views[0], torch.randn(2, 17, backbone.width)
    extra = torch.randn(2, 3, backbone.width)

    class Tokens(torch.nn.Module):
        def forward(self, tokens, ctx):
            return extra

    slot = Slot()
    slot.add("attn_tokens", "prompts", Tokens())
    out = run_block(view, slot, x, backbone.context(1))
    block = view.block
    with_extra = torch.cat([x, extra], dim=1)
    expected = x + block.attention(q_x=block.ln_1(with_extra))[:, :17]
    expected = expected + block.mlp(block.ln_2(expected))
    assert out.shape == x.shape and torch.allclose(out, expected, atol=1e-6)


def test_a_fine_tuned_text_tower_trains_at_the_backbone_learning_rate():
    from adaptvid.train.schedule import parameter_groups

    model = _model("tiny-clip")
    model.set_text_classifier()
    model.text.requires_grad_(True)
    groups = {id(p): g["name"] for g in parameter_groups(model, 1e-3, 1e-5, 0.05) for p in g["params"]}
    assert {groups[id(p)] for p in model.text.parameters()} <= {"backbone", "backbone-no-decay"}
    assert {groups[id(p)] for p in model.head.parameters()} <= {"new", "new-no-decay"}


def test_training_only_the_temperature_does_not_re_encode_the_class_texts():
    model = _model("tiny-clip")
    model.set_text_classifier()
    model.text.logit_scale.requires_grad_(True)
    first = model.head.class_embeddings()
    assert model.head.class_embeddings() is first and not first.requires_grad


def test_a_transformers_folder_without_tokenizer_files_falls_back_to_the_bundled_bpe(tmp_path):
    original = _model("tiny-hf-clip")
    original.backbone.text.model.save_pretrained(tmp_path)      # weights only, no tokenizer files
    text = adaptvid.build_model(f"hf:{tmp_path}", "frozen", class_names=NAMES).use_text()
    assert isinstance(text.tokenizer, ClipBpeTokenizer)
    assert torch.equal(text.encode_texts(SENTENCES), original.use_text().encode_texts(SENTENCES))


def test_an_explicit_unprojected_readout_is_refused_for_text_classifiers():
    with pytest.raises(ValueError, match="project=False cannot be used with coop"):
        adaptvid.build_model("tiny-clip", "coop", class_names=NAMES, project=False)
