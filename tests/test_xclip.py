"""X-CLIP: the method on tiny towers, loading transformers XCLIPModel checkpoints, ViT-B/16 counts."""
import pytest
import torch

import adaptvid
from adaptvid.methods._xclip_modules import MessageToken
from adaptvid.methods.xclip import XClipClassifier, XClipVideoEncoder
from adaptvid.model import count_parameters
from adaptvid.text import scaled_cosine
from adaptvid.train.schedule import parameter_groups
from conftest import check_one_training_step, fixed_batch_losses, tiny_video

CLASSES = ["square growing", "disc fading", "red turning blue"]
FRAMES = 4


# -- a tiny transformers X-CLIP, saved and loaded back ------------------------------------------

def tiny_xclip_config(num_frames: int = FRAMES):
    from transformers import XCLIPConfig

    common = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
    return XCLIPConfig(
        # OpenAI CLIP's BPE vocabulary, so open_clip's bundled tokenizer gives valid ids offline
        text_config=dict(vocab_size=49408, max_position_embeddings=77, **common),
        vision_config=dict(image_size=64, patch_size=16, num_frames=num_frames, mit_hidden_size=32,
                           mit_intermediate_size=128, mit_num_hidden_layers=1, mit_num_attention_heads=2, **common),
        projection_dim=32, prompt_layers=2, prompt_num_attention_heads=2,
    )


@pytest.fixture(scope="module")
def saved_xclip(tmp_path_factory):
    """(folder, reference XCLIPModel): random weights, nudged so biases, alpha and norms are not at their init."""
    from transformers import XCLIPModel

    with torch.random.fork_rng():
        torch.manual_seed(3)
        reference = XCLIPModel(tiny_xclip_config()).eval()
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("xclip") / "tiny-xclip"
    reference.save_pretrained(folder)
    return folder, reference


def _ids(texts):
    from adaptvid.text import ClipBpeTokenizer

    return ClipBpeTokenizer()(texts)


def _hf_video(seed: int = 5, batch: int = 2, frames: int = FRAMES):
    return torch.randn(batch, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))  # HF layout (B, T, C, H, W)


def test_loaded_xclip_gives_the_transformers_logits(saved_xclip):
    folder, reference = saved_xclip
    model = adaptvid.load_xclip(folder)
    ids, mask = _ids(["playing sports", "eating spaghetti", "go shopping", "a person is dancing"])
    video = _hf_video()
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask, pixel_values=video).logits_per_video
        ours = model.text_logits(video.transpose(1, 2), input_ids=ids, attention_mask=mask)
        ours_from_strings = model.text_logits(video.transpose(1, 2), ["playing sports", "eating spaghetti",
                                                                      "go shopping", "a person is dancing"])
    assert ours.shape == theirs.shape == (2, 4)
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours_from_strings - theirs).abs().max() <= 1e-4
    # nothing lost or duplicated: adaptvid's model holds exactly the checkpoint's parameters
    assert count_parameters(model)[1] == sum(p.numel() for p in reference.parameters())


def test_loaded_xclip_classifies_its_class_names_like_transformers(saved_xclip):
    folder, reference = saved_xclip
    model = adaptvid.load_xclip(folder, class_names=CLASSES)
    ids, mask = _ids(CLASSES)   # the class name alone, X-CLIP's class text
    video = _hf_video(seed=6)
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask, pixel_values=video).logits_per_video
        ours = model(video.transpose(1, 2))
    assert (ours - theirs).abs().max() <= 1e-4


def test_loaded_xclip_without_classes_scores_text_and_takes_classes_later(saved_xclip):
    model = adaptvid.load_xclip(saved_xclip[0])
    video = tiny_video(frames=FRAMES)
    with pytest.raises(ValueError, match="text_logits"):
        model(video)
    adaptvid.set_classes(model, CLASSES)
    with torch.no_grad():
        assert model(video).shape == (2, 3)


def test_loaded_xclip_trains_saves_and_reloads(saved_xclip, tmp_path):
    model = adaptvid.load_xclip(saved_xclip[0], class_names=CLASSES).train()
    text_before = {n: p.detach().clone() for n, p in model.text.named_parameters()}
    check_one_training_step(model, tiny_video(frames=FRAMES), torch.tensor([0, 2]))
    assert all(torch.equal(p, text_before[n]) for n, p in model.text.named_parameters())
    model.save_adapter(tmp_path / "ckpt")
    reloaded = adaptvid.load_model(tmp_path / "ckpt")
    assert reloaded.backbone.name == model.backbone.name and reloaded.backbone.name.startswith("hf-xclip:")
    video = tiny_video(frames=FRAMES)
    model.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(video), model(video), rtol=0, atol=1e-6)


def test_loaded_xclip_takes_another_frame_count(saved_xclip):
    model = adaptvid.load_xclip(saved_xclip[0], num_frames=8, class_names=CLASSES)
    table = model.video_encoder.mit.position_embedding
    assert table.shape[1] == 8
    with torch.no_grad():
        assert torch.isfinite(model(tiny_video(frames=8))).all()
        with pytest.raises(ValueError, match="num_frames=6"):
            model(tiny_video(frames=6))


def test_hf_xclip_backbone_is_a_plain_clip_tower(saved_xclip):
    backbone = adaptvid.create_backbone(f"hf-xclip:{saved_xclip[0]}")
    layer = backbone.tower.vision_model.encoder.layers[0]
    assert not any(hasattr(layer, name) for name in ("message_fc", "message_ln", "message_attn"))
    model = adaptvid.build_model(backbone, "frozen", num_classes=3, num_frames=FRAMES)
    with torch.no_grad():
        assert model(tiny_video(frames=FRAMES)).shape == (2, 3)
    assert backbone.preprocess.mean == (0.485, 0.456, 0.406)  # X-CLIP's ImageNet statistics without a processor file


def test_unreachable_hub_and_missing_folder_fail_with_a_fix(tmp_path):
    with pytest.raises(adaptvid.BackboneLoadError, match="--weights"):
        adaptvid.load_xclip("microsoft/xclip-base-patch32")
    with pytest.raises(adaptvid.BackboneLoadError):
        adaptvid.load_xclip(tmp_path / "no-such-folder")


# -- the method on tiny towers --------------------------------------------------------------------

@pytest.fixture(params=["tiny-clip", "tiny-hf-clip"])
def tiny_xclip(request):
    return adaptvid.build_model(request.param, "x-clip", class_names=CLASSES, num_frames=FRAMES)


def test_structure_and_init(tiny_xclip):
    model = tiny_xclip
    assert isinstance(model.video_encoder, XClipVideoEncoder) and isinstance(model.head, XClipClassifier)
    assert all(isinstance(slot.attn_tokens["x_clip"], MessageToken) for slot in model.backbone.slots)
    assert torch.equal(model.head.prompts_generator.alpha, torch.full((model.text.embed_dim,), 0.1))
    assert model.video_encoder.mit.position_embedding.shape == (1, FRAMES, model.text.embed_dim)
    assert model.head.templates == ("{}",)
    # trained: the image tower and the new modules; the text tower (and CLIP's temperature) frozen
    assert all(p.requires_grad for p in model.backbone.tower.parameters())
    assert not any(p.requires_grad for p in model.text.parameters())


def test_message_tokens_mix_frames_of_a_video_only():
    model = adaptvid.build_model("tiny-clip", "x-clip", class_names=CLASSES, num_frames=FRAMES).eval()
    backbone = model.backbone
    video = tiny_video(frames=FRAMES)
    changed = video.clone()
    changed[0, :, 3] += 1.0   # only the last frame of the first video

    def cls_tokens(v):
        frames = v.transpose(1, 2).reshape(-1, 3, 64, 64)
        with torch.no_grad():
            return backbone.forward_tokens(frames, backbone.context(FRAMES))[0][:, 0].reshape(2, FRAMES, -1)

    before, after = cls_tokens(video), cls_tokens(changed)
    assert not torch.allclose(before[0, 0], after[0, 0])   # frame 0 heard about frame 3
    assert torch.equal(before[1], after[1])               # the other video did not
    message = backbone.slots[0].attn_tokens["x_clip"]
    tokens = torch.randn(2 * FRAMES, 17, backbone.width)
    assert message(tokens, backbone.context(FRAMES)).shape == (2 * FRAMES, 1, backbone.width)


def test_prompt_generator_makes_the_class_texts_video_specific(tiny_xclip):
    model = tiny_xclip.eval()
    videos = tiny_video(frames=FRAMES)
    with torch.no_grad():
        embedding, visual = model.video_encoder(videos, model)
        texts = model.head.class_embeddings()
        prompted = model.head.prompts_generator(texts.unsqueeze(0).expand(2, -1, -1), visual)
        assert not torch.allclose(prompted[0], prompted[1], atol=1e-5)   # each video gets its own texts
        # alpha = 0 switches the generator off: plain CLIP cosine logits with the raw class texts
        model.head.prompts_generator.alpha.zero_()
        torch.testing.assert_close(model(videos), scaled_cosine(embedding, texts, model.text.logit_scale))


def test_trains_loss_goes_down_and_text_stays_frozen(tiny_xclip):
    model = tiny_xclip.train()
    video, labels = tiny_video(frames=FRAMES), torch.tensor([0, 2])
    text_before = {n: p.detach().clone() for n, p in model.text.named_parameters()}
    check_one_training_step(model, video, labels)
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=1e-3, backbone_lr=1e-4, weight_decay=0.0))
    losses = fixed_batch_losses(model, video, labels, steps=6, optimizer=optimizer)
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, text_before[n]) for n, p in model.text.named_parameters())


def test_learning_rates_tower_at_backbone_lr_new_modules_at_lr():
    model = adaptvid.build_model("tiny-clip", "x-clip", class_names=CLASSES, num_frames=FRAMES)
    groups = parameter_groups(model, lr=1e-3, backbone_lr=1e-4, weight_decay=0.01)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    tower = {id(p) for p in model.backbone.tower.parameters()}
    new = [p for p in model.parameters() if p.requires_grad and id(p) not in tower]
    assert new and all(lr_of[id(p)] == 1e-3 for p in new)
    assert all(lr_of[i] == 1e-4 for i in tower)


def test_freeze_visual_and_train_text_options():
    frozen = adaptvid.build_model("tiny-clip", "x-clip", class_names=CLASSES, num_frames=FRAMES, freeze_visual=True)
    assert not any(p.requires_grad for p in frozen.backbone.tower.parameters())
    check_one_training_step(frozen, tiny_video(frames=FRAMES), torch.tensor([0, 1]))
    texted = adaptvid.build_model("tiny-hf-clip", "x-clip", class_names=CLASSES, num_frames=FRAMES, train_text=True)
    assert all(p.requires_grad for p in texted.text.parameters())
    check_one_training_step(texted, tiny_video(frames=FRAMES), torch.tensor([0, 1]))


def test_wrong_frame_count_and_bad_options_are_clear():
    model = adaptvid.build_model("tiny-clip", "x-clip", class_names=CLASSES, num_frames=FRAMES)
    with pytest.raises(ValueError, match="num_frames=2"):
        model(tiny_video(frames=2))
    with pytest.raises(ValueError, match="mit_heads"):
        adaptvid.build_model("tiny-clip", "x-clip", class_names=CLASSES, mit_heads=0)
    with pytest.raises(ValueError, match="exactly one"):
        adaptvid.build_model("tiny-clip", "x-clip", class_names=CLASSES, class_template="a video")


# -- CLIP ViT-B/16, 8 frames: the official code's counts (METHODS.md section 8) -----------------

def test_vit_b16_parameters_and_flops_match_the_official_code():
    from adaptvid.model.profile import profile_model

    names = [f"class {i}" for i in range(400)]
    model = adaptvid.build_model("clip", "x-clip", class_names=names, weights="random", num_frames=8)
    trainable, _ = count_parameters(model)
    tower = {id(p) for p in model.backbone.tower.parameters()}
    new = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in tower)
    assert trainable == 131_501_056
    assert new == 45_308_416
    model = model.to("meta")
    model.head.class_embeddings()   # X-CLIP encodes its (frozen) class texts once: cached before counting
    result = profile_model(model)
    # 1.0261 in the official code; adaptvid averages the visual tokens over frames before the linear
    # prompt projection (same result), which saves 7/8 of that projection: 1.0223
    assert abs(result["flops_ratio"] - 1.0223) < 0.002, result["flops_ratio"]
    assert abs(result["flops_ratio"] - 1.0261) < 0.02


def test_building_x_clip_on_an_hf_xclip_backbone_checks_the_head_counts(saved_xclip):
    name = f"hf-xclip:{saved_xclip[0]}"
    with pytest.raises(ValueError, match="mit_heads=2"):
        adaptvid.build_model(name, "x-clip", class_names=CLASSES, num_frames=FRAMES)   # defaults: 8 heads
    model = adaptvid.build_model(name, "x-clip", class_names=CLASSES, num_frames=FRAMES, mit_heads=2, vsp_heads=2)
    loaded = adaptvid.load_xclip(saved_xclip[0], class_names=CLASSES)
    video = tiny_video(frames=FRAMES)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(video), loaded(video), rtol=0, atol=0)
