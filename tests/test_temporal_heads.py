"""Heads over frame embeddings: the temporal transformer, Efficient-Prompt, ActionCLIP, Text4Vis, ATP, Singularity."""
import pytest
import torch
import torch.nn.functional as F

import adaptvid
from adaptvid.methods._temporal import TemporalTransformer
from adaptvid.model import count_parameters
from adaptvid.train.schedule import parameter_groups
from conftest import check_one_training_step, tiny_video

NAMES = ["square growing", "disc fading", "red turning blue"]
FRAMES = 4
TEXT_BACKBONES = ("tiny-clip", "tiny-hf-clip")


def _model(backbone, method, **options):
    return adaptvid.build_model(backbone, method, class_names=NAMES, num_frames=FRAMES, **options)


def _labels():
    return torch.tensor([0, 2])


# -- the temporal transformer ---------------------------------------------------------------
def test_temporal_transformer_shapes_and_frame_order():
    x = torch.randn(3, 6, 32)
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    plain = TemporalTransformer(32, 2, 4, 6, position=False).eval()
    assert plain(x).shape == (3, 32)
    torch.testing.assert_close(plain(x[:, perm]), plain(x), rtol=0, atol=1e-5)   # a set: order ignored
    positioned = TemporalTransformer(32, 2, 4, 6, position_std=0.5).eval()
    assert not torch.allclose(positioned(x[:, perm]), positioned(x), atol=1e-3)  # positions make it a sequence


def test_temporal_transformer_residual_and_init():
    x = torch.randn(2, 4, 64)
    head = TemporalTransformer(64, 1, 1, 4, residual=True, init="bert", num_positions=77)
    assert head.position.weight.shape == (77, 64)
    linear = head.blocks[0].mlp.c_fc
    assert abs(float(linear.weight.detach().std()) - 0.02) < 0.002 and not linear.bias.any()
    expected = (head.blocks(x + head.position.weight[:4]) + x).mean(dim=1)
    torch.testing.assert_close(head(x), expected)
    with pytest.raises(ValueError, match="num_frames=80"):
        head(torch.randn(1, 80, 64))
    with pytest.raises(ValueError, match="heads dividing"):
        TemporalTransformer(64, 1, 5, 4)


# -- Efficient-Prompt -----------------------------------------------------------------------
def test_efficient_prompt_counts_the_official_parameters_on_vit_b16():
    model = adaptvid.build_model("clip", "efficient-prompt", class_names=[f"action {i}" for i in range(400)],
                                 num_frames=8, weights="random")
    assert count_parameters(model)[0] == 3_195_904   # 77x512 prompt table + 8x512 temporal + one 512-wide block
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head", "aggregator"} and model.cacheable()


def test_efficient_prompt_flops_overhead_matches_the_official_code():
    from adaptvid.model.profile import profile_model

    model = adaptvid.build_model("clip", "efficient-prompt", class_names=["a", "b"], num_frames=8,
                                 weights="random").to("meta")
    result = profile_model(model)
    assert abs(result["gflops_bare_per_view"] - 281.015) / 281.015 < 0.005
    assert abs(result["flops_ratio"] - 1.0002) < 1e-4, result["flops_ratio"]   # METHODS.md section 8 (class texts cached)


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_efficient_prompt_uses_the_official_sequence_layout(backbone):
    model = _model(backbone, "efficient-prompt")
    prompt, text = model.head.prompt, model.text
    plain = text.tokenize(NAMES).ids
    layout = prompt.token_layout(text, NAMES)
    for c in range(len(NAMES)):
        length = int(text.eot_index(plain[c:c + 1]))          # L: the EOT index of the plain tokenisation
        row = layout[c]
        assert row[0] == plain[c, 0]                          # SOS at 0
        assert torch.equal(row[17:16 + length], plain[c, 1:length])   # the name at 17 .. 16+L-1
        assert row[16 + length + 16] == plain[c, length]      # EOT at 16+L+16
        assert int((row >= 0).sum()) == length + 1            # every other slot is a learned row
    # The official quirk: postfix rows are absolute positions, so one class's postfix is another's name slot.
    _, from_words, _ = prompt.layout(text, NAMES)
    short, long_ = int(text.eot_index(plain[:1])), int(text.eot_index(plain[2:3]))
    assert long_ > short and not from_words[0, 16 + short] and from_words[2, 16 + short]


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_efficient_prompt_without_context_is_the_plain_text_embedding(backbone):
    # With 0 prefix and 0 postfix vectors the sequence is SOS name EOT (then masked learned rows): CLIP's own encoding.
    model = _model(backbone, "efficient-prompt", prefix=0, postfix=0)
    ids, mask = model.text.tokenize(NAMES)
    with torch.no_grad():
        torch.testing.assert_close(model.head.prompt(model.text, NAMES), model.text.library_encode(ids, mask),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_efficient_prompt_trains_only_its_modules_with_a_fixed_temperature(backbone):
    model = _model(backbone, "efficient-prompt")
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        expected = F.normalize(model.encode_video(video), dim=-1) @ model.head.class_embeddings().t() / 0.07
        torch.testing.assert_close(model(video), expected)
    check_one_training_step(model, video, _labels(), nonzero_grads=False)   # rows after EOT get no gradient


def test_efficient_prompt_refuses_names_that_do_not_fit():
    model = adaptvid.build_model("tiny-clip", "efficient-prompt", class_names=["word " * 50], num_frames=FRAMES)
    with pytest.raises(ValueError, match="lower --prefix/--postfix"):
        model(tiny_video(frames=FRAMES))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=2, videos_per_class_val=1, num_frames=16)
    return root


def test_efficient_prompt_trains_from_cached_features(demo, tmp_path):
    from adaptvid.cli import main
    from adaptvid.data import VideoDataset, VideoTransform, read_class_names, read_list_file
    from adaptvid.train.feature_cache import cached_dataset

    names = read_class_names(demo / "classes.txt")
    model = adaptvid.build_model("tiny-clip", "efficient-prompt", class_names=names, num_frames=4).eval()
    pp = model.backbone.preprocess
    dataset = VideoDataset(read_list_file(demo / "val.txt"), num_frames=4, train=False,
                           transform=VideoTransform(pp.image_size, pp.mean, pp.std, train=False))
    features = cached_dataset(model, dataset, tmp_path / "cache", "val", batch_size=4, num_workers=0)
    item = features[1]
    with torch.no_grad():
        live = model(dataset[item["index"]]["video"][None])
        model.from_features = True
        cached = model(item["video"][None])
    torch.testing.assert_close(cached, live, rtol=0, atol=2e-2)   # features stored in fp16
    assert main(["adapt", "--backbone", "tiny-clip", "--method", "efficient-prompt", "--train", str(demo / "train.txt"),
                 "--val", str(demo / "val.txt"), "--classes", str(demo / "classes.txt"), "--frames", "4",
                 "--cache-features", str(tmp_path / "cli-cache"), "--output", str(tmp_path / "run"),
                 "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress"]) == 0
    assert list((tmp_path / "cli-cache").rglob("*.safetensors"))


# -- ActionCLIP and Text4Vis ----------------------------------------------------------------
def test_transf_head_has_the_official_size_on_vit_b16():
    from adaptvid.methods.actionclip import transf_fusion

    head = transf_fusion(512, 6, 8)
    assert sum(p.numel() for p in head.parameters()) == 18_953_728   # 77x512 positions + 6 blocks of 3,152,384
    assert head.blocks[0].attn.num_heads == 8 and head.residual and head.blocks[0].ln_1.eps == 1e-12


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_actionclip_trains_both_towers_and_its_fusion_at_the_new_rate(backbone):
    model = _model(backbone, "actionclip")
    assert all(p.requires_grad for p in model.backbone.tower.parameters())
    assert all(p.requires_grad for p in model.text.parameters())
    groups = {id(p): g["name"] for g in parameter_groups(model, 5e-5, 5e-6, 0.2) for p in g["params"]}
    assert {groups[id(p)] for p in model.aggregator.parameters()} <= {"new", "new-no-decay"}
    towers = list(model.backbone.tower.parameters()) + list(model.text.parameters())
    assert {groups[id(p)] for p in towers} <= {"backbone", "backbone-no-decay"}
    check_one_training_step(model, tiny_video(frames=FRAMES), _labels(), nonzero_grads=False)


def test_actionclip_samples_one_template_per_class_in_training_and_averages_them_in_eval():
    from adaptvid.text import encode_class_prompts

    model = _model("tiny-clip", "actionclip")
    head = model.head
    assert len(head.templates) >= 8
    calls = []
    original = model.text.forward
    model.text.forward = lambda ids, mask=None: calls.append(len(ids)) or original(ids, mask)
    head.class_embeddings()
    assert calls == [len(NAMES)]              # one prompt per class per step
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(head.class_embeddings(), encode_class_prompts(model.text, NAMES, head.templates))


@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
def test_text4vis_fixes_the_class_texts_and_fine_tunes_the_image_tower(backbone):
    from adaptvid.text import encode_class_prompts

    model = _model(backbone, "text4vis")
    trainable_text = [n for n, p in model.text.named_parameters() if p.requires_grad]
    assert trainable_text == ["logit_scale"]
    first = model.head.class_embeddings()
    torch.testing.assert_close(first, encode_class_prompts(model.text, NAMES, ("a video of a person {}.",)))
    check_one_training_step(model, tiny_video(frames=FRAMES), _labels(), nonzero_grads=False)
    assert model.head.class_embeddings() is first          # cached once; the trained temperature does not re-encode
    groups = {id(p): g["name"] for g in parameter_groups(model, 5e-5, 5e-6, 0.2) for p in g["params"]}
    assert {groups[id(p)] for p in model.aggregator.parameters()} <= {"new", "new-no-decay"}
    assert groups[id(model.text.logit_scale)].startswith("backbone")


def test_text4vis_can_keep_the_image_tower_frozen():
    model = _model("tiny-clip", "text4vis", freeze_visual=True)
    assert not any(p.requires_grad for p in model.backbone.tower.parameters()) and model.cacheable()


# -- ATP ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ("tiny-clip", "tiny-vit"))
def test_atp_selects_exactly_one_frame_embedding(backbone):
    model = _model(backbone, "atp").eval()
    video = tiny_video(frames=FRAMES)
    with torch.no_grad():
        frames = model.encode_frames(video)
        chosen = model.encode_video(video)
        index = model.aggregator.last_index
        assert torch.equal(chosen, frames[torch.arange(2), index])
        perm = torch.tensor([2, 0, 3, 1])
        assert torch.equal(model.encode_video(video[:, :, perm]), chosen)   # atemporal: the same frame wins
    assert model.cacheable()
    model.train()
    soft = model.encode_video(video)                      # straight-through: a hard pick in the forward
    torch.testing.assert_close(soft, frames[torch.arange(2), model.aggregator.last_index], rtol=0, atol=1e-5)
    soft.sum().backward()
    assert model.aggregator.score.weight.grad.abs().sum() > 0   # the selector learns through the soft weights


def test_atp_with_the_text_classifier_trains_only_the_selector():
    model = _model("tiny-clip", "atp", atp_classifier="text")
    names = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"aggregator"}
    check_one_training_step(model, tiny_video(frames=FRAMES), _labels(), all_trainable_move=False, nonzero_grads=False)


# -- Singularity ----------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ("tiny-clip", "tiny-vit"))
def test_singularity_trains_on_one_frame_per_video_and_tests_on_all(backbone, monkeypatch):
    model = _model(backbone, "singularity")
    seen = []
    original = model.backbone.forward_tokens
    monkeypatch.setattr(model.backbone, "forward_tokens", lambda frames, *a, **k: seen.append(len(frames)) or original(frames, *a, **k))
    video = tiny_video(frames=FRAMES)
    check_one_training_step(model, video, _labels())
    model.eval()
    with torch.no_grad():
        model(video)
    assert seen == [2, 2 * FRAMES]


def test_singularity_picks_random_frames_of_each_video_in_order():
    from adaptvid.methods.singularity import RandomFrames

    model = _model("tiny-clip", "frozen")
    features = torch.arange(2 * 6).float().reshape(2, 6, 1).expand(2, 6, 3)
    model.from_features = True
    torch.manual_seed(3)
    picked = RandomFrames(3)(features, model)
    assert picked.shape == (2, 3, 3)
    for b in range(2):
        rows = picked[b, :, 0].long().tolist()
        assert rows == sorted(rows) and len(set(rows)) == 3 and all(6 * b <= r < 6 * b + 6 for r in rows)
    torch.manual_seed(3)
    assert torch.equal(RandomFrames(3)(features, model), picked)   # torch's RNG decides
    video = tiny_video(frames=FRAMES)
    model.from_features = False
    assert RandomFrames(1)(video, model).shape == (2, 3, 1, 64, 64)


# -- every method learns --------------------------------------------------------------------
@pytest.mark.parametrize("backbone", TEXT_BACKBONES)
@pytest.mark.parametrize("method", ["efficient-prompt", "actionclip", "text4vis", "atp", "singularity"])
def test_loss_goes_down_on_a_fixed_batch(method, backbone):
    model = _model(backbone, method)
    video, labels = tiny_video(frames=FRAMES), _labels()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(F.cross_entropy(model(video), labels))

    before = eval_loss()
    model.train()
    for _ in range(10):
        optimizer.zero_grad()
        F.cross_entropy(model(video), labels).backward()
        optimizer.step()
    assert eval_loss() < before


@pytest.mark.parametrize("method,backbone", [("efficient-prompt", "tiny-clip"), ("actionclip", "tiny-hf-clip"),
                                             ("text4vis", "tiny-clip"), ("atp", "tiny-vit"), ("singularity", "tiny-clip")])
def test_checkpoint_round_trip(method, backbone, tmp_path):
    from adaptvid.checkpoints import load_model

    model = _model(backbone, method)
    video = tiny_video(frames=FRAMES)
    check_one_training_step(model, video, _labels(), all_trainable_move=False, nonzero_grads=False)
    model.eval()
    model.save_adapter(tmp_path, class_names=NAMES)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path).eval()(video), model(video))
