"""Prompt tuning: the text prompt learner (CoOp family), coop and vpt."""
import pytest
import torch

import adaptvid
from adaptvid import build_model, load_model
from adaptvid.text import TextClassifier
from adaptvid.text.prompt_learner import TextPromptLearner
from conftest import check_one_training_step, fixed_batch_losses, tiny_video

CLASSES = ["square growing", "disc fading", "red turning blue"]
CLIP_TINY = ("tiny-clip", "tiny-hf-clip")
FRAMES = 2


def _text(backbone="tiny-clip"):
    return build_model(backbone, "frozen", class_names=CLASSES, num_frames=FRAMES).use_text()


_losses = fixed_batch_losses


# -- the prompt learner --------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", CLIP_TINY)
def test_context_set_to_template_words_gives_the_template_embedding_exactly(backbone):
    text = _text(backbone)
    learner = TextPromptLearner(text, CLASSES, init="a video of a")
    assert learner.n_ctx == 4 and learner.ctx.shape == (4, text.width)
    with torch.no_grad():
        out = learner(text, CLASSES)
        assert torch.equal(out, text.encode_texts([f"a video of a {name}." for name in CLASSES]))


@pytest.mark.parametrize("position,sentence", [("end", "{} a video of a."), ("middle", "a video {} of a.")])
def test_other_positions_place_the_context_around_the_name(position, sentence):
    text = _text()
    learner = TextPromptLearner(text, CLASSES, init="a video of a", position=position)
    with torch.no_grad():
        assert torch.equal(learner(text, CLASSES), text.encode_texts([sentence.format(n) for n in CLASSES]))


def test_class_specific_contexts_have_one_set_per_class():
    text = _text()
    learner = TextPromptLearner(text, CLASSES, n_ctx=5, class_specific=True)
    assert learner.ctx.shape == (3, 5, text.width)
    assert learner.tokens.slots.shape == (3, 5) and learner.tokens.ids.shape == (3, text.context_length)
    assert learner(text, CLASSES).shape == (3, text.embed_dim)
    assert not learner.handles_new_classes
    with pytest.raises(ValueError, match="class-specific"):
        learner(text, ["another class"])
    shared = TextPromptLearner(text, CLASSES, n_ctx=5)
    assert shared.ctx.shape == (5, text.width) and shared(text, ["a", "b c"]).shape == (2, text.embed_dim)
    # the phrase initialisation is repeated for every class
    csc = TextPromptLearner(text, CLASSES, init="a video of a", class_specific=True)
    assert csc.ctx.shape == (3, 4, text.width) and torch.equal(csc.ctx[0], csc.ctx[2])


def test_token_buffers_are_not_saved():
    learner = TextPromptLearner(_text(), CLASSES, n_ctx=4)
    assert set(learner.state_dict()) == {"ctx"}


def test_deep_text_prompts_change_the_outputs_only_from_block_one_on():
    text = _text()
    shallow = TextPromptLearner(text, CLASSES, n_ctx=4)
    deep = TextPromptLearner(text, CLASSES, n_ctx=4, depth=2)
    with torch.no_grad():
        deep.ctx.copy_(shallow.ctx)
    seen = {"shallow": {}, "deep": {}}

    def recorder(key):
        def hook(i, x):
            seen[key][i] = x.clone()
            return x
        return hook

    with torch.no_grad():
        out_shallow = shallow(text, CLASSES, layer_hook=recorder("shallow"))
        out_deep = deep(text, CLASSES, layer_hook=recorder("deep"))
    assert torch.equal(seen["shallow"][0], seen["deep"][0])          # block 0 sees the same sequence
    slots = deep.tokens.slots[0]
    assert not torch.equal(seen["shallow"][1][:, slots], seen["deep"][1][:, slots])
    others = torch.ones(seen["deep"][1].shape[1], dtype=torch.bool)
    others[slots] = False
    assert torch.equal(seen["shallow"][1][:, others], seen["deep"][1][:, others])   # only the context is replaced
    assert not torch.allclose(out_shallow, out_deep)
    # Deep prompts equal to the shallow context's own states before block 1 give the shallow result exactly
    # (with the context in front, the causal mask makes those states the same for every class).
    with torch.no_grad():
        deep.deep_ctx[0].copy_(seen["shallow"][1][0, slots])
        assert torch.equal(deep(text, CLASSES), out_shallow)


def test_bad_learner_options_name_the_fix():
    text = _text()
    with pytest.raises(ValueError, match="position"):
        TextPromptLearner(text, CLASSES, position="back")
    with pytest.raises(ValueError, match="depth"):
        TextPromptLearner(text, CLASSES, depth=text.depth + 1)
    with pytest.raises(ValueError, match="does not fit"):
        TextPromptLearner(text, CLASSES, n_ctx=80)
    with pytest.raises(ValueError, match="ctx_position"):
        build_model("tiny-clip", "coop", class_names=CLASSES, ctx_position="left")
    with pytest.raises(ValueError, match="class names"):
        build_model("tiny-clip", "coop", num_classes=3)


def test_a_missing_tokenizer_raises_the_encoders_error():
    text = _text()
    text.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer available offline"):
        TextPromptLearner(text, CLASSES, n_ctx=4)


# -- coop ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", CLIP_TINY)
@pytest.mark.parametrize("options", [{}, {"ctx_class_specific": True, "ctx_tokens": 4},
                                     {"ctx_init": "a video of a", "text_prompt_depth": 2}])
def test_coop_trains_only_the_context(backbone, options):
    model = build_model(backbone, "coop", class_names=CLASSES, num_frames=FRAMES, **options)
    assert isinstance(model.head, TextClassifier) and isinstance(model.head.prompt, TextPromptLearner)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.prompt.ctx"} | ({"head.prompt.deep_ctx"} if "text_prompt_depth" in options else set())
    video, labels = tiny_video(batch=3, frames=FRAMES), torch.tensor([0, 1, 2])
    check_one_training_step(model, video, labels)
    losses = _losses(model, video, labels)
    assert losses[-1] < losses[0], losses


def test_coop_at_init_from_a_phrase_is_zero_shot_clip_with_that_template():
    model = build_model("tiny-clip", "coop", class_names=CLASSES, num_frames=FRAMES, ctx_init="a video of a").eval()
    reference = build_model("tiny-clip", "frozen", class_names=CLASSES, num_frames=FRAMES).eval()
    reference.set_text_classifier(("a video of a {}.",))
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():   # (the template classifier renormalises its one-template mean: rounding only)
        torch.testing.assert_close(model(video), reference(video), rtol=1e-6, atol=1e-6)


def test_coop_composes_with_adapters_in_either_order():
    video, labels = tiny_video(batch=3, frames=FRAMES), torch.tensor([0, 1, 2])
    for method in ("coop,st-adapter", "st-adapter,coop"):
        model = build_model("tiny-clip", method, class_names=CLASSES, num_frames=FRAMES, bottleneck=8)
        assert model.pool == "token-mean" and model.project and isinstance(model.head, TextClassifier)
        check_one_training_step(model, video, labels, all_trainable_move=False, nonzero_grads=False)


def test_coop_refuses_a_second_learned_text_context():
    with pytest.raises(ValueError, match="two methods"):
        build_model("tiny-clip", "vita-clip,coop", class_names=CLASSES, num_frames=FRAMES)


def test_coop_with_a_shared_context_scores_new_classes():
    model = build_model("tiny-clip", "coop", class_names=CLASSES, num_frames=FRAMES, ctx_tokens=4).eval()
    model.head.set_class_names(["circle", "triangle spinning"])
    with torch.no_grad():
        assert model(tiny_video(frames=FRAMES)).shape == (2, 2)
    csc = build_model("tiny-clip", "coop", class_names=CLASSES, num_frames=FRAMES, ctx_class_specific=True)
    with pytest.raises(ValueError, match="one context per training class"):
        csc.head.set_class_names(["circle"])


# -- vpt -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ("tiny-clip", "tiny-hf-clip", "tiny-vit"))
@pytest.mark.parametrize("depth", ("shallow", "deep", "1"))
def test_vpt_trains_prompts_and_head_only(backbone, depth):
    model = build_model(backbone, "vpt", num_classes=3, num_frames=FRAMES, vpt_tokens=4, vpt_depth=depth)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    prompts = {n for n in trainable if not n.startswith("head.")}
    expected = {"shallow": 1, "deep": model.backbone.depth, "1": 1}[depth]
    assert len(prompts) == expected and all(n.endswith(".prompts") for n in prompts)
    bound = (6 / (3 * 16 * 16 + model.backbone.width)) ** 0.5
    assert all(p.abs().max() <= bound for n, p in model.named_parameters() if n in prompts)
    video, labels = tiny_video(batch=3, frames=FRAMES), torch.tensor([0, 1, 2])
    check_one_training_step(model, video, labels)
    losses = _losses(model, video, labels)
    assert losses[-1] < losses[0], losses


def _frames(video):
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


def test_deep_vpt_equals_prompts_inserted_after_cls_through_the_library_blocks():
    model = build_model("tiny-clip", "vpt", num_classes=3, num_frames=FRAMES, vpt_tokens=3).eval()
    bb = model.backbone
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        x = bb.embed(_frames(video))
        for block, slot in zip(bb.tower.transformer.resblocks, bb.slots):
            prompts = slot.attn_tokens["vpt"].prompts
            x = torch.cat([x[:, :1], prompts.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)   # VPT: after CLS
            x = block(x)
            x = torch.cat([x[:, :1], x[:, 1 + prompts.shape[0]:]], dim=1)                       # dropped
        expected = bb.head(x[:, 0]).reshape(2, FRAMES, -1)
        torch.testing.assert_close(model.encode_frames(video), expected, rtol=1e-5, atol=1e-6)


def test_shallow_vpt_equals_prompts_carried_through_the_library_blocks():
    model = build_model("tiny-clip", "vpt", num_classes=3, num_frames=FRAMES, vpt_tokens=3, vpt_depth="shallow").eval()
    bb = model.backbone
    assert bb.context(FRAMES).num_prefix_tokens == 4
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        x = bb.embed(_frames(video))
        prompts = bb.after_embed["vpt"].prompts
        x = torch.cat([x[:, :1], prompts.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for block in bb.tower.transformer.resblocks:
            x = block(x)
        assert torch.equal(model.encode_frames(video), bb.head(x[:, 0]).reshape(2, FRAMES, -1))


def test_shallow_vpt_prompts_count_as_prefix_tokens_for_methods_that_reshape_patches():
    model = build_model("tiny-clip", "vpt,st-adapter", num_classes=3, num_frames=FRAMES, vpt_depth="shallow",
                        bottleneck=8)
    check_one_training_step(model, tiny_video(batch=3, frames=FRAMES), torch.tensor([0, 1, 2]),
                            all_trainable_move=False, nonzero_grads=False)


def test_vpt_options_are_checked():
    with pytest.raises(ValueError, match="vpt_depth"):
        build_model("tiny-clip", "vpt", num_classes=3, vpt_depth="half")
    with pytest.raises(ValueError, match="blocks"):
        build_model("tiny-clip", "vpt", num_classes=3, vpt_depth="5")


@pytest.mark.parametrize("backbone", CLIP_TINY)
def test_coop_and_vpt_together(backbone):
    model = build_model(backbone, "coop,vpt", class_names=CLASSES, num_frames=FRAMES, ctx_tokens=4, vpt_tokens=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.prompt.ctx" in trainable and any(n.endswith("attn_tokens.vpt.prompts") for n in trainable)
    video, labels = tiny_video(batch=3, frames=FRAMES), torch.tensor([0, 1, 2])
    check_one_training_step(model, video, labels)
    losses = _losses(model, video, labels)
    assert losses[-1] < losses[0], losses


# -- checkpoints ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,options", [
    ("coop", {"ctx_tokens": 4}),
    ("coop", {"ctx_class_specific": True, "ctx_position": "middle", "text_prompt_depth": 2}),
    ("vpt", {"vpt_depth": "shallow"}),
    ("coop,vpt", {"vpt_depth": "deep"}),
])
def test_checkpoint_round_trip_gives_identical_logits(method, options, tmp_path):
    model = build_model("tiny-clip", method, class_names=CLASSES, num_frames=FRAMES, **options)
    video, labels = tiny_video(batch=3, frames=FRAMES), torch.tensor([0, 1, 2])
    _losses(model, video, labels, steps=2)
    model.eval().save_adapter(tmp_path)
    loaded = load_model(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))


def test_methods_are_registered_as_prompt_tuning():
    for name in ("coop", "vpt", "vita-clip"):
        assert adaptvid.get_method(name).family == "prompt tuning"
    assert adaptvid.get_method("coop").needs_text and not adaptvid.get_method("vpt").needs_text


def test_coop_text_prompt_depth_deep_means_every_text_block():
    model = build_model("tiny-clip", "coop", class_names=CLASSES, num_frames=FRAMES, text_prompt_depth="deep")
    assert model.head.prompt.depth == model.text.depth == 2
    assert build_model("tiny-clip", "coop", class_names=CLASSES, text_prompt_depth="shallow").head.prompt.depth == 1
    with pytest.raises(ValueError, match="'shallow', 'deep' or a number"):
        build_model("tiny-clip", "coop", class_names=CLASSES, text_prompt_depth="0")
