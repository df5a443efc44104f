"""LoRA through peft on the three libraries' towers: targets, identity at init, training, merge, checkpoints."""
import json

import pytest
import torch
from torch import nn

import adaptvid
from adaptvid import build_model, count_parameters, create_backbone, load_model
from adaptvid.methods.lora import lora_modules
from conftest import TINY_BACKBONES, tiny_video

# Tiny towers: width 64, MLP 256, 2 blocks (both libraries' CLIP and timm's ViT).
EXPECTED_TARGETS = {
    "tiny-clip": {
        "attn": ["transformer.resblocks.{i}.attn"],
        "mlp": ["transformer.resblocks.{i}.mlp.c_fc", "transformer.resblocks.{i}.mlp.c_proj"],
    },
    "tiny-hf-clip": {
        "attn": [f"vision_model.encoder.layers.{{i}}.self_attn.{p}_proj" for p in ("k", "v", "q", "out")],
        "mlp": ["vision_model.encoder.layers.{i}.mlp.fc1", "vision_model.encoder.layers.{i}.mlp.fc2"],
    },
    "tiny-vit": {
        "attn": ["blocks.{i}.attn.qkv", "blocks.{i}.attn.proj"],
        "mlp": ["blocks.{i}.mlp.fc1", "blocks.{i}.mlp.fc2"],
    },
}


def _build(backbone, method="lora", **options):
    return build_model(backbone, method, num_classes=5, num_frames=4, **options)


def _randomise_lora(model, std=0.05):
    """Trained-looking LoRA: B away from zero (A is random already)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, std)


def _is_lora(name):
    return ".lora_A.lora." in name or ".lora_B.lora." in name


def _names(model):
    return [name for name, _ in model.named_parameters()]


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("targets", ["attn", "attn+mlp"])
def test_the_right_modules_are_targeted(backbone, targets):
    model = _build(backbone, targets=targets)
    parts = EXPECTED_TARGETS[backbone]["attn"] + (EXPECTED_TARGETS[backbone]["mlp"] if targets == "attn+mlp" else [])
    expected = [p.format(i=i) for i in range(2) for p in parts]
    assert list(lora_modules(model)) == expected
    print(backbone, targets, list(lora_modules(model)))
    tower = model.backbone.tower
    if backbone == "tiny-vit":  # the patch embedding's conv is also named `proj`: untouched
        assert type(tower.patch_embed.proj) is nn.Conv2d
        assert not any("patch_embed" in name for name in _names(model) if _is_lora(name))
    if backbone == "tiny-clip":  # the whole nn.MultiheadAttention is wrapped: in_proj and out_proj adapted
        names = [n for n in _names(model) if _is_lora(n) and "resblocks.0.attn" in n]
        assert names == ["backbone.tower.transformer.resblocks.0.attn.base_layer.out_proj.lora_A.lora.weight",
                         "backbone.tower.transformer.resblocks.0.attn.base_layer.out_proj.lora_B.lora.weight",
                         "backbone.tower.transformer.resblocks.0.attn.lora_A.lora.weight",
                         "backbone.tower.transformer.resblocks.0.attn.lora_B.lora.weight"]


def test_lora_layers_choose_blocks():
    assert list(lora_modules(_build("tiny-vit", lora_layers="last:1"))) == ["blocks.1.attn.qkv", "blocks.1.attn.proj"]
    assert list(lora_modules(_build("tiny-vit", lora_layers="0"))) == ["blocks.0.attn.qkv", "blocks.0.attn.proj"]
    assert len(lora_modules(_build("tiny-vit", lora_layers="-1,0"))) == 4


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_identity_at_init(backbone):
    adapted = _build(backbone).eval()
    frozen = _build(backbone, "frozen").eval()
    assert (adapted.pool, adapted.project) == (frozen.pool, frozen.project) == ("embed-mean", True)
    video = tiny_video()
    with torch.no_grad():
        diff = (adapted.encode_video(video) - frozen.encode_video(video)).abs().max().item()
    assert diff <= 1e-6
    print(backbone, "identity at init, max abs diff", diff)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_gradients_only_in_lora_and_head_and_frozen_weights_stay_bit_identical(backbone):
    model = _build(backbone)
    video, labels = tiny_video(), torch.tensor([1, 3])
    assert model(video).shape == (2, 5)
    assert model.encode_video(video).shape == (2, model.embed_dim)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in _names(model) if _is_lora(n)} | {"head.weight", "head.bias"}
    frozen = {n: (p, p.detach().clone()) for n, p in model.named_parameters() if not p.requires_grad}

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the second step runs with B != 0, i.e. with the update folded into the forward
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(video), labels).backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, name
        optimizer.step()
    model(video)
    model.state_dict()
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            original, value = frozen[name]
            assert p is original, f"frozen {name} was replaced"
            assert torch.equal(p, value), f"frozen {name} changed"


@pytest.mark.parametrize("backbone", ["tiny-clip", "tiny-vit"])
def test_lora_trains_at_the_new_modules_learning_rate(backbone):
    from adaptvid.train.schedule import parameter_groups

    model = _build(backbone)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = parameter_groups(model, lr=1.0, backbone_lr=0.1, weight_decay=0.05)
    assert {names[id(p)] for g in groups if g["lr"] == 1.0 for p in g["params"]} == {
        n for n, p in model.named_parameters() if p.requires_grad}
    adaptvid.merge(model)
    assert not any(id(p) in model.new_lr_parameters for p in model.parameters())


def test_open_clip_attention_update_is_w_plus_scaled_ba():
    """The open_clip attention sees W + (alpha/r) B A on in_proj and on out_proj, each once."""
    model = _build("tiny-clip", rank=4, alpha=8.0)
    _randomise_lora(model)
    layer = lora_modules(model)["transformer.resblocks.0.attn"]
    mha = layer.get_base_layer()
    scale = 8.0 / 4
    out = mha.out_proj

    def delta(lora_layer):  # by hand, not through peft's get_delta_weight
        return scale * lora_layer.lora_B["lora"].weight @ lora_layer.lora_A["lora"].weight

    reference = nn.MultiheadAttention(64, mha.num_heads, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(mha.in_proj_weight + delta(layer))
        reference.in_proj_bias.copy_(mha.in_proj_bias)
        reference.out_proj.weight.copy_(out.base_layer.weight + delta(out))
        reference.out_proj.bias.copy_(out.base_layer.bias)
    w_in, w_out = layer.adapted_weights()
    torch.testing.assert_close(w_in, reference.in_proj_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(w_out, reference.out_proj.weight, rtol=0, atol=1e-6)
    x = torch.randn(3, 17, 64)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got = layer(x, x, x, need_weights=False)[0]
            want = reference(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_the_protocol_path_sees_lora_as_the_library_block_does(backbone):
    """Blocks with a method module run through the protocol's handles; LoRA must act there too."""
    alone = _build(backbone, pool="token-mean", project=False).eval()       # empty slots: library blocks
    with_st = _build(backbone, "st-adapter,lora", bottleneck=8).eval()      # st-adapter (zero) in every slot
    _randomise_lora(alone)
    lora = {n: p for n, p in alone.state_dict().items() if _is_lora(n)}
    assert with_st.load_state_dict(lora, strict=False).unexpected_keys == []
    video = tiny_video()
    with torch.no_grad():
        torch.testing.assert_close(with_st.encode_video(video), alone.encode_video(video), rtol=0, atol=1e-5)
        assert not torch.allclose(alone.encode_video(video), _build(backbone, "frozen", pool="token-mean",
                                                                    project=False).eval().encode_video(video))


def test_lora_alone_is_per_frame():
    model = _build("tiny-vit").eval()
    _randomise_lora(model)
    video = tiny_video()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(video), model.encode_video(video.flip(2)))


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_merge_gives_the_plain_tower_and_the_same_outputs(backbone):
    plain = create_backbone(backbone)
    modules = [(name, id(m)) for name, m in plain.tower.named_modules()]
    params = [(name, id(p), tuple(p.shape)) for name, p in plain.tower.named_parameters()]
    plain_total = sum(p.numel() for p in plain.tower.parameters())
    model = build_model(plain, "lora", num_classes=5, num_frames=4, targets="attn+mlp").eval()
    head = count_parameters(model.head)[1]
    _randomise_lora(model)
    video = tiny_video()
    with torch.no_grad():
        before = model.encode_video(video)
        adaptvid.merge(model)
        after = model.encode_video(video)
    diff = (after - before).abs().max().item()
    print(backbone, "merge max abs diff", diff)
    assert diff <= 1e-5
    assert model.merged_methods == ["lora"] and not lora_modules(model)
    tower = model.backbone.tower
    assert [(name, id(m)) for name, m in tower.named_modules()] == modules   # the library's own modules, back
    assert [(name, id(p), tuple(p.shape)) for name, p in tower.named_parameters()] == params
    assert count_parameters(model) == (head, plain_total + head)
    assert model.backbone.views[0].attn_module is tower.get_submodule(
        {"tiny-clip": "transformer.resblocks.0.attn", "tiny-hf-clip": "vision_model.encoder.layers.0.self_attn",
         "tiny-vit": "blocks.0.attn"}[backbone])
    frames = video[:, :, 0]
    with torch.no_grad():  # the protocol still computes exactly what the library computes
        torch.testing.assert_close(model.backbone(frames), model.backbone.library_forward(frames), rtol=0, atol=0)
    with pytest.raises(ValueError, match="can be merged"):
        adaptvid.merge(model)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("merged", [False, True], ids=["unmerged", "merged"])
def test_save_load_round_trip(backbone, merged, tmp_path):
    model = _build(backbone, rank=4).eval()
    _randomise_lora(model)
    if merged:
        adaptvid.merge(model)
    model.save_adapter(tmp_path)
    saved = json.loads((tmp_path / "adaptvid.json").read_text())
    assert saved["methods"] == [{"name": "lora", "config": {"rank": 4, "alpha": 16.0, "lora_dropout": 0.0,
                                                            "targets": "attn", "lora_layers": "all"}}]
    loaded = load_model(tmp_path).eval()
    assert _names(loaded) == _names(model)
    assert bool(lora_modules(loaded)) != merged
    video = tiny_video()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=0)


def test_composes_with_st_adapter_and_merge_folds_only_lora(tmp_path):
    model = _build("tiny-vit", "st-adapter,lora", bottleneck=8)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".st_adapter." in n for n in names) and any(_is_lora(n) for n in names)
    assert all(".st_adapter." in n or _is_lora(n) or n.startswith("head.") for n in names)
    with torch.no_grad():  # let both methods act
        for name, p in model.named_parameters():
            if ".st_adapter.conv.weight" in name:
                p.normal_(0, 0.1)
    _randomise_lora(model)
    video = tiny_video()
    loss = model(video).sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(grads[n].abs().sum() > 0 for n in grads if _is_lora(n))
    # (the last block's st-adapter only touches patch tokens, which no longer reach the CLS readout)
    assert all(grads[n].abs().sum() > 0 for n in grads if ".slots.0.before_mlp.st_adapter." in n)

    model.eval()
    with torch.no_grad():
        before = model(video)
        adaptvid.merge(model)
        after = model(video)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert model.merged_methods == ["lora"] and not lora_modules(model)
    assert "st_adapter" in model.backbone.slots[0].before_mlp      # st-adapter stays, still trainable
    assert all(".st_adapter." in n or n.startswith("head.") for n, p in model.named_parameters() if p.requires_grad)

    model.save_adapter(tmp_path)
    loaded = load_model(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), after, rtol=0, atol=0)


def test_earlier_methods_keep_their_trainable_tower_weights():
    model = _build("tiny-vit", "full,lora")
    assert all(p.requires_grad for p in model.backbone.tower.parameters())
    adaptvid.merge(model)
    assert all(p.requires_grad for p in model.backbone.tower.parameters())


def test_options_are_checked():
    with pytest.raises(ValueError, match="targets must be one of"):
        _build("tiny-vit", targets="everything")
    with pytest.raises(ValueError, match="rank must be >= 1"):
        _build("tiny-vit", rank=0)
    with pytest.raises(ValueError, match="lora_layers must be"):
        _build("tiny-vit", lora_layers="first:2")
    with pytest.raises(ValueError, match="outside a 2-block tower"):
        _build("tiny-vit", lora_layers="5")


def test_cli_help_renders_the_lora_options(capsys):
    from adaptvid.cli import main

    with pytest.raises(SystemExit) as exit_info:  # argparse formats help with %: a stray % breaks every --help
        main(["adapt", "--help"])
    assert exit_info.value.code == 0
    assert "--lora-layers" in capsys.readouterr().out


def test_vit_b16_default_parameter_count():
    model = build_model("clip", "lora", num_classes=400, weights="random")
    trainable, total = count_parameters(model)
    head = 512 * 400 + 400                      # embed-mean readout through the CLIP projection (512)
    r, d, blocks = 8, 768, 12
    per_block = r * (d + 3 * d) + r * (d + d)   # fused in_proj (768 -> 2304) + out_proj (768 -> 768)
    analytic = blocks * per_block
    print("CLIP ViT-B/16 lora (rank 8, attn): trainable excl. head", trainable - head, "analytic", analytic)
    assert trainable - head == analytic == 442_368
    assert total - trainable == 86_192_640      # the untouched CLIP ViT-B/16 image tower
    adaptvid.merge(model)
    assert count_parameters(model) == (head, 86_192_640 + head)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from adaptvid.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, videos_per_class_train=3, videos_per_class_val=2, num_frames=16)
    return root


def test_recipe_runs_a_smoke_step_on_a_tiny_backbone(demo, tmp_path):
    from adaptvid.cli import main

    out = tmp_path / "o"
    assert main(["adapt", "--recipe", "lora/k400-vit-b16-8f", "--demo", "--demo-dir", str(demo), "--output", str(out),
                 "--set", "backbone=tiny-clip", "--set", "weights=null", "--set", "train.precision=no",
                 "--set", "train.batch_size=4", "--epochs", "1", "--num-workers", "0", "--no-progress"]) == 0
    config = json.loads((out / "adaptvid.json").read_text())
    assert config["methods"] == [{"name": "lora", "config": {"rank": 8, "alpha": 16.0, "lora_dropout": 0.0,
                                                             "targets": "attn", "lora_layers": "all"}}]
    assert lora_modules(load_model(out))


def test_views_rebuilt_after_lora_see_the_adapted_attention_on_open_clip():
    import copy

    from adaptvid.backbones import attention

    model = build_model("tiny-clip", "st-adapter,lora", num_classes=2, num_frames=2, bottleneck=8).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    twin = copy.deepcopy(model)  # rebuilds its views through the peft wrapper
    video = torch.randn(1, 3, 2, 64, 64)
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        torch.testing.assert_close(twin.encode_video(video), model.encode_video(video))
        for view in twin.backbone.views:
            xn = view.norm1(x)
            through_handles = view.attn_out(attention(*view.qkv(xn)))
            torch.testing.assert_close(through_handles, view.attn(xn), rtol=1e-4, atol=1e-4)
            base = view.attn_module.get_base_layer()
            plain, _ = torch.nn.MultiheadAttention.forward(base, xn, xn, xn, need_weights=False)
            assert (plain - through_handles).abs().max() > 1e-2  # the handles do see the LoRA update
