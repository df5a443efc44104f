"""LoRA models as PEFT adapter folders: peft itself loads them onto a plain copy of the same tower and
computes what the adaptvid tower computes; the layout is the one peft's save_pretrained writes; refusals."""
import copy
import json

import pytest
import torch

import adaptvid
from adaptvid import build_model, create_backbone
from adaptvid.checkpoints.peft_export import (CONFIG_NAME, WEIGHTS_NAME, export_peft_adapter, load_peft_adapter,
                                              peft_adapter_state_dict, peft_multihead_attention_problem)
from adaptvid.methods.lora import lora_modules

peft = pytest.importorskip("peft")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

EXPORTABLE = ("tiny-hf-clip", "tiny-vit")   # open_clip's attention: see test_open_clip_attention_*


def _images(n=2, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def _randomise_lora(model, std=0.05):
    """Trained-looking LoRA: B away from zero, A redrawn too."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=generator) * (std if ".lora_B." in name else 0.3))


def _base_module(backbone):
    """The library module a peft user holds: the whole transformers CLIPModel, timm / open_clip's image tower."""
    return backbone.text.model if backbone.library == "transformers" else backbone.tower


def _library_features(module, library, images):
    """The library's own image features: get_image_features / forward_features + pre-logits head / visual()."""
    if library == "transformers":
        out = module.get_image_features(pixel_values=images)
        return out.pooler_output if hasattr(out, "pooler_output") else out   # transformers 5 returns an output
    if library == "timm":
        return module.forward_head(module.forward_features(images), pre_logits=True)
    return module(images)


def _lora_model_and_fresh_base(name, method="lora", **options):
    """A LoRA model on a tiny backbone and an untouched copy of that backbone's library module."""
    backbone = create_backbone(name)
    fresh = copy.deepcopy(_base_module(backbone)).eval()   # before injection: the plain frozen weights
    model = build_model(backbone, method, num_classes=5, num_frames=4, **options).eval()
    _randomise_lora(model)
    return model, fresh


@pytest.mark.parametrize("options", [dict(rank=4, alpha=8.0, targets="attn+mlp"), dict(lora_layers="last:1")],
                         ids=["attn+mlp", "last-block"])
@pytest.mark.parametrize("name", EXPORTABLE)
def test_peft_loads_the_export_and_computes_the_adaptvid_tower(name, options, tmp_path):
    model, fresh = _lora_model_and_fresh_base(name, **options)
    library = model.backbone.library
    images = _images()
    with torch.no_grad():
        plain = _library_features(fresh, library, images)
    assert export_peft_adapter(model, tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    with torch.no_grad():
        theirs = _library_features(peft_model, library, images)
        ours = model.backbone.library_forward(images)           # the library forward on the injected tower
        protocol = model.backbone(images)                       # adaptvid's block loop (empty slots)
    diff = (theirs - ours).abs().max().item()
    print(name, options, "peft vs adaptvid tower, max abs diff", diff)
    assert diff <= 1e-6
    torch.testing.assert_close(protocol, ours, rtol=0, atol=1e-6)
    assert (plain - ours).abs().max() > 1e-3                     # the LoRA does act: the check is not vacuous

    # peft consumed every tensor of the file: its own state dict of the loaded adapter is the file
    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    loaded = peft.get_peft_model_state_dict(peft_model)
    assert set(loaded) == set(saved) and len(saved) == 2 * sum(
        2 if hasattr(m.get_base_layer(), "in_proj_weight") else 1 for m in lora_modules(model).values())
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_folder_is_what_peft_save_pretrained_writes(name, tmp_path):
    model, fresh = _lora_model_and_fresh_base(name, rank=4, targets="attn+mlp")
    export_peft_adapter(model, tmp_path / "ours")
    config = peft.LoraConfig.from_pretrained(str(tmp_path / "ours"))   # peft parses it
    peft_model = peft.get_peft_model(fresh, config)
    peft.set_peft_model_state_dict(peft_model, load_file(str(tmp_path / "ours" / WEIGHTS_NAME)))
    peft_model.save_pretrained(str(tmp_path / "peft"))

    ours = json.loads((tmp_path / "ours" / CONFIG_NAME).read_text())
    theirs = json.loads((tmp_path / "peft" / CONFIG_NAME).read_text())
    assert sorted(ours.pop("target_modules")) == sorted(theirs.pop("target_modules"))
    assert ours == theirs
    assert (ours["peft_type"], ours["task_type"], ours["r"], ours["lora_alpha"], ours["bias"]) == ("LORA", None, 4, 16,
                                                                                                  "none")
    expected_class = "CLIPModel" if name == "tiny-hf-clip" else "VisionTransformer"
    assert ours["auto_mapping"]["base_model_class"] == expected_class
    assert ours["base_model_name_or_path"] is None            # a tiny, seeded tower has no hub id
    assert (tmp_path / "ours" / CONFIG_NAME).read_text() == (tmp_path / "peft" / CONFIG_NAME).read_text().replace(
        *_target_order(tmp_path))

    ours_w, theirs_w = (load_file(str(tmp_path / d / WEIGHTS_NAME)) for d in ("ours", "peft"))
    assert set(ours_w) == set(theirs_w)
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in ours_w)
    for key in ours_w:
        assert torch.equal(ours_w[key], theirs_w[key]), key
    for folder in ("ours", "peft"):
        with safe_open(str(tmp_path / folder / WEIGHTS_NAME), "pt") as handle:
            assert handle.metadata() == {"format": "pt"}


def _target_order(tmp_path):
    """(peft's target_modules text, ours): the same names, peft's in its set's order."""
    def block(folder):
        text = (tmp_path / folder / CONFIG_NAME).read_text()
        start = text.index('"target_modules": [')
        return text[start:text.index("]", start) + 1]
    return block("peft"), block("ours")


def test_keys_are_peft_names_relative_to_the_tower(tmp_path):
    model, _ = _lora_model_and_fresh_base("tiny-vit", rank=4)
    keys = sorted(peft_adapter_state_dict(model))
    assert keys[:4] == ["base_model.model.blocks.0.attn.proj.lora_A.weight",
                        "base_model.model.blocks.0.attn.proj.lora_B.weight",
                        "base_model.model.blocks.0.attn.qkv.lora_A.weight",
                        "base_model.model.blocks.0.attn.qkv.lora_B.weight"]
    export_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["target_modules"] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv",
                                        "blocks.1.attn.proj"]
    assert config["inference_mode"] is True and config["lora_dropout"] == 0.0


def test_only_the_lora_of_a_composed_model_is_exported(tmp_path):
    model, fresh = _lora_model_and_fresh_base("tiny-vit", "lora,st-adapter", bottleneck=8)
    export_peft_adapter(model, tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    assert len(saved) == 8 and not any("st_adapter" in k or "head" in k for k in saved)
    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    images = _images()
    with torch.no_grad():   # the library forward on the tower: LoRA only (st-adapter sits in adaptvid's slots)
        torch.testing.assert_close(_library_features(peft_model, "timm", images),
                                   model.backbone.library_forward(images), rtol=0, atol=1e-6)


def test_adaptvid_loads_its_export_back(tmp_path):
    source, _ = _lora_model_and_fresh_base("tiny-hf-clip", rank=4, targets="attn+mlp")
    export_peft_adapter(source, tmp_path)
    target = build_model("tiny-hf-clip", "lora", num_classes=5, num_frames=4, rank=4, targets="attn+mlp").eval()
    video = torch.randn(1, 3, 2, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert not torch.allclose(target.encode_video(video), source.encode_video(video))
        assert load_peft_adapter(target, tmp_path) is target
        torch.testing.assert_close(target.encode_video(video), source.encode_video(video), rtol=0, atol=0)


def test_adaptvid_loads_an_adapter_peft_trained(tmp_path):
    """An adapter made with peft itself on the plain tower (short regex targets) loads into adaptvid's LoRA."""
    backbone = create_backbone("tiny-vit")
    tower = copy.deepcopy(backbone.tower)
    peft_model = peft.get_peft_model(tower, peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*attn\.(qkv|proj)"))
    _randomise_lora(peft_model)
    peft_model.save_pretrained(str(tmp_path))
    model = build_model(backbone, "lora", num_classes=5, num_frames=4, rank=4, alpha=8.0).eval()
    load_peft_adapter(model, tmp_path)
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.library_forward(images),
                                   _library_features(peft_model.eval(), "timm", images), rtol=0, atol=1e-6)


def test_load_refuses_adapters_that_do_not_fit(tmp_path):
    backbone = create_backbone("tiny-vit")
    tower = copy.deepcopy(backbone.tower)
    # peft's suffix match on "proj" also catches the patch embedding's conv: adaptvid's LoRA never adapts it
    peft.get_peft_model(tower, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "proj"])).save_pretrained(
        str(tmp_path / "conv"))
    model = build_model(backbone, "lora", num_classes=5, num_frames=4, rank=4, alpha=8.0)
    with pytest.raises(ValueError, match=r"unexpected \['base_model.model.patch_embed.proj.lora_A.weight'"):
        load_peft_adapter(model, tmp_path / "conv")
    other_rank = build_model("tiny-vit", "lora", num_classes=5, num_frames=4, rank=8, alpha=8.0)
    with pytest.raises(ValueError, match="build it with rank=4, alpha=8"):
        load_peft_adapter(other_rank, tmp_path / "conv")
    with pytest.raises(FileNotFoundError, match="no PEFT adapter here"):
        load_peft_adapter(model, tmp_path / "nothing")
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / CONFIG_NAME).write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        load_peft_adapter(model, tmp_path / "ia3")
    config = json.loads((tmp_path / "conv" / CONFIG_NAME).read_text())
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / CONFIG_NAME).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True"):
        load_peft_adapter(model, tmp_path / "dora")


def test_refuses_a_model_without_lora(tmp_path):
    for method in ("frozen", "st-adapter"):
        with pytest.raises(ValueError, match="no LoRA to export"):
            export_peft_adapter(build_model("tiny-vit", method, num_classes=5, num_frames=4), tmp_path)
    assert not any(tmp_path.iterdir())


def test_refuses_a_merged_lora(tmp_path):
    model, _ = _lora_model_and_fresh_base("tiny-vit")
    adaptvid.merge(model)
    with pytest.raises(ValueError, match="was merged into the tower weights"):
        export_peft_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="was merged"):
        load_peft_adapter(model, tmp_path)


def test_refuses_a_tower_whose_weights_are_not_the_librarys(tmp_path):
    model, fresh = _lora_model_and_fresh_base("tiny-vit", "full,lora")
    with pytest.raises(ValueError, match="tower weights are trainable.*allow_modified_base=True"):
        export_peft_adapter(model, tmp_path)
    export_peft_adapter(model, tmp_path, allow_modified_base=True)   # untrained here: still the same base
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["base_model_name_or_path"] is None
    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(_library_features(peft_model, "timm", images),
                                   model.backbone.library_forward(images), rtol=0, atol=1e-6)


def test_refuses_a_scale_peft_cannot_write(tmp_path):
    model, _ = _lora_model_and_fresh_base("tiny-vit")
    next(iter(lora_modules(model).values())).scaling["lora"] *= 2   # one module scaled apart from the others
    with pytest.raises(ValueError, match="one rank and scale for every module"):
        export_peft_adapter(model, tmp_path)


def test_open_clip_attention_is_refused_while_peft_computes_it_otherwise(tmp_path):
    """open_clip's nn.MultiheadAttention: peft loads the very keys adaptvid's layer has, but (peft 0.21) its layer
    adds the out_proj update twice. The export refuses then; the test shows both facts on the tiny tower."""
    model, fresh = _lora_model_and_fresh_base("tiny-clip", rank=4)
    problem = peft_multihead_attention_problem()
    images = _images()
    if problem is None:   # a peft that computes W + dW: the export must round-trip like the others
        export_peft_adapter(model, tmp_path)
        peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
        with torch.no_grad():
            torch.testing.assert_close(peft_model(images), model.backbone.library_forward(images), rtol=0, atol=1e-5)
        return
    assert "out_proj it adds it twice" in problem
    with pytest.raises(ValueError, match="nn.MultiheadAttention.*PR #3774"):
        export_peft_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="nn.MultiheadAttention"):
        load_peft_adapter(model, tmp_path)
    assert not any(tmp_path.iterdir())

    # the evidence: the keys fit peft's layer exactly, its output differs, and doubling out_proj's update matches it
    from peft import LoraConfig, PeftModel
    from safetensors.torch import save_file

    from adaptvid.checkpoints.peft_export import _adapter_tensors

    tensors = _adapter_tensors(model)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=list(lora_modules(model)))
    config.save_pretrained(str(tmp_path))
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    peft_model = PeftModel.from_pretrained(copy.deepcopy(fresh), str(tmp_path)).eval()
    assert set(peft.get_peft_model_state_dict(peft_model)) == set(tensors)
    doubled = copy.deepcopy(model)
    with torch.no_grad():
        for layer in lora_modules(doubled).values():
            layer.get_base_layer().out_proj.lora_B["lora"].weight.mul_(2)
        theirs, ours = peft_model(images), model.backbone.library_forward(images)
        assert (theirs - ours).abs().max() > 1e-3
        torch.testing.assert_close(theirs, doubled.backbone.library_forward(images), rtol=0, atol=1e-5)


def test_base_model_name_or_path_is_the_hub_id_of_the_default_weights():
    from types import SimpleNamespace

    from adaptvid.checkpoints.peft_export import _hub_id

    def model(name, library, weights=None, tower=None):
        return SimpleNamespace(backbone=SimpleNamespace(name=name, library=library, tower=tower), weights=weights)

    timm_tower = SimpleNamespace(pretrained_cfg={"hf_hub_id": "timm/vit_base_patch16_224.augreg_in21k"})
    assert _hub_id(model("hf:openai/clip-vit-base-patch16", "transformers")) == "openai/clip-vit-base-patch16"
    assert _hub_id(model("timm:vit_base_patch16_224.augreg_in21k", "timm", tower=timm_tower)) == \
        "timm/vit_base_patch16_224.augreg_in21k"
    assert _hub_id(model("clip", "open_clip")) == "timm/vit_base_patch16_clip_224.openai"   # open_clip's hub copy
    assert _hub_id(model("open_clip:ViT-B-16/no-such-tag", "open_clip")) is None
    assert _hub_id(model("hf:openai/clip-vit-base-patch16", "transformers", weights="random")) is None
    assert _hub_id(model("hf:openai/clip-vit-base-patch16", "transformers", weights="/some/file")) is None
    for name, library in (("tiny-clip", "open_clip"), ("tiny-hf-clip", "transformers"), ("tiny-vit", "timm")):
        assert _hub_id(model(name, library, tower=SimpleNamespace(pretrained_cfg={"hf_hub_id": "x/y"}))) is None


def test_auto_peft_model_rebuilds_a_transformers_export_from_its_base(tmp_path):
    """auto_mapping names the CLIPModel the tower came from, so AutoPeftModel can build the base and the adapter."""
    model, fresh = _lora_model_and_fresh_base("tiny-hf-clip", rank=4)
    fresh.save_pretrained(str(tmp_path / "base"))   # stands in for the hub repository of a real backbone
    export_peft_adapter(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": str(tmp_path / "base")}))
    rebuilt = peft.AutoPeftModel.from_pretrained(str(tmp_path / "adapter")).eval()
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(_library_features(rebuilt, "transformers", images),
                                   model.backbone.library_forward(images), rtol=0, atol=1e-6)
