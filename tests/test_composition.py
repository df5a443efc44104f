"""Composition does not depend on the order the methods are given in.

Every pair of registered methods, on tiny-clip: either both orders are refused when the model is built,
with a ValueError that says why (the pair is then skipped with that message: ``pytest -rs`` lists the
refused pairs), or both orders build the same model — the same methods applied in the same order, the
same trainable tensors, the same logits once one model's weights are copied into the other — and one
training step gives every trainable tensor a gradient: no dead weights beyond those a method has alone.
"""
import copy
import functools
import itertools
import logging

import pytest
import torch

import adaptvid
from adaptvid.backbones import create_backbone
from adaptvid.methods.atp import ATPSelector
from adaptvid.methods.registry import make_configs, method_fields
from adaptvid.text import TextClassifier

FRAMES = 4
CLASS_NAMES = ["square growing", "disc fading", "red turning blue"]
# Options that keep methods tiny (given to a pair only when one of its methods has the field).
SMALL = {"bottleneck": 8, "spatial_frames": 2, "grid": 2}
# Tensors no gradient can reach in their own method, whatever it is composed with.
INHERENT = {
    # ATP's scores go through a softmax / argmax over the frames: a bias shared by all frames changes nothing.
    "aggregator.score.bias",
}
# Known defects of methods outside this change, each with what would fix it (strict: the mark must go once
# fixed).
KNOWN = {
    ("clip4clip", "vita-clip"): "clip4clip trains CLIP's logit scale although it keeps vita-clip's classifier, "
                                "which has its own temperature (text.logit_scale gets no gradient); clip4clip "
                                "should set it with _text_heads.train_clip_logit_scale",
}


def _names():
    return sorted(adaptvid.list_methods())


PAIRS = [pytest.param(pair, id=f"{pair[0]}+{pair[1]}",
                      marks=[pytest.mark.xfail(reason=KNOWN[pair], strict=True)] if pair in KNOWN else [])
         for pair in itertools.combinations(_names(), 2)]


@functools.lru_cache(maxsize=None)
def _base_backbone():
    return create_backbone("tiny-clip")


def _backbone():
    """A fresh copy of one tiny-clip backbone (creating one makes open_clip load its tokenizer: slow); the
    tokenizer, which nothing trains or changes, is shared."""
    base = _base_backbone()
    tokenizer = base.text.tokenizer
    return copy.deepcopy(base, {id(tokenizer): tokenizer})


def _options(names):
    fields = {f.name for name in names for f in method_fields(adaptvid.get_method(name))}
    return {key: value for key, value in SMALL.items() if key in fields}


def _build(names, **options):
    torch.manual_seed(0)
    return adaptvid.build_model(_backbone(), ",".join(names), class_names=CLASS_NAMES, num_frames=FRAMES,
                                **{**_options(names), **options})


def _video(batch=2):
    return torch.randn(batch, 3, FRAMES, 64, 64, generator=torch.Generator().manual_seed(1))


LABELS = torch.tensor([0, 2])


def _perturb(model, seed=3):
    """Move every trainable tensor off its initial value, so zero-initialised branches (adapters' up
    projections, ST-Adapter's conv) let gradients through and every method acts on the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)


def _training_step_gradients(model):
    """One training-mode forward/backward on the perturbed model: {trainable name: gradient or None};
    asserts that no frozen tensor got a gradient."""
    _perturb(model)
    model.train()
    torch.manual_seed(5)
    torch.nn.functional.cross_entropy(model(_video()), LABELS).backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grads[name] = p.grad
        else:
            assert p.grad is None, f"{name} is frozen but got a gradient"
    return grads


def _dead(grads):
    return {name for name, g in grads.items() if g is None or not g.abs().sum() > 0}


@functools.lru_cache(maxsize=None)
def _dead_alone(name):
    """Trainable tensors of ``name`` alone that one training step leaves without a gradient (e.g. ST-Adapter's
    last-block adapter, which only changes patch tokens the CLS readout no longer sees)."""
    torch.manual_seed(0)
    return frozenset(_dead(_training_step_gradients(_build((name,)))))


def _explains(message, names):
    aliases = {alias for name in names for alias in (name, *adaptvid.get_method(name).aliases)}
    return len(message) > 40 and any(alias in message for alias in aliases)


@pytest.mark.parametrize("pair", PAIRS)
def test_pair_builds_the_same_model_in_either_order_or_is_refused(pair):
    first, second = pair, pair[::-1]
    try:
        model = _build(first)
    except ValueError as error:
        message = str(error)
        with pytest.raises(ValueError) as other:
            _build(second)
        assert str(other.value) == message, "the pair is refused differently in the two orders"
        assert _explains(message, pair), f"the refusal does not say which method or why: {message!r}"
        pytest.skip(f"refused: {message}")
    reverse = _build(second)   # must not raise: a pair builds in both orders or in none

    assert [n for n, _ in model.methods] == [n for n, _ in reverse.methods]
    assert [c for _, c in model.methods] == [c for _, c in reverse.methods]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert shapes == {n: tuple(p.shape) for n, p in reverse.named_parameters() if p.requires_grad}
    assert shapes, "the composed model trains nothing"
    assert (model.pool, model.project) == (reverse.pool, reverse.project)
    for part in ("head", "aggregator", "decoder", "video_encoder"):
        assert type(getattr(model, part)) is type(getattr(reverse, part)), part

    _perturb(model)
    reverse.load_state_dict(model.state_dict())       # strict: the same tensors, buffers included
    video = _video()
    with torch.no_grad():
        torch.testing.assert_close(reverse.eval()(video), model.eval()(video), rtol=1e-5, atol=1e-5)

    grads = _training_step_gradients(model)
    known = _dead_alone(pair[0]) | _dead_alone(pair[1]) | INHERENT
    missing = sorted(_dead(grads) - known)
    assert not missing, f"trainable tensors that get no gradient (dead weights): {missing[:6]} ({len(missing)})"


# -- the pairs the user found broken -------------------------------------------------------------------

@pytest.mark.parametrize("method", ["atp,st-adapter", "st-adapter,atp"])
def test_atp_selector_runs_and_trains_with_st_adapter(method):
    model = _build(method.split(","))
    assert isinstance(model.aggregator, ATPSelector)
    assert model.pool == "embed-mean", "the selector reads per-frame embeddings"
    assert model.project is False and model.aggregator.embedding.in_features == model.backbone.width
    assert model.head.in_features == model.backbone.width
    model.train()
    model.aggregator.last_index = None
    torch.nn.functional.cross_entropy(model(_video()), LABELS).backward()   # at init, unperturbed
    assert model.aggregator.last_index is not None and model.aggregator.last_index.shape == (2,)
    selector = dict(model.aggregator.named_parameters())
    assert len(selector) == 29
    for name, p in selector.items():
        assert p.grad is not None, f"atp's {name} got no gradient"
        if f"aggregator.{name}" not in INHERENT:
            assert p.grad.abs().sum() > 0, f"atp's {name} got an all-zero gradient"


@pytest.mark.parametrize("other", ["aim", "zeroi2v"])
def test_atp_sizes_its_selector_for_the_readout_of_aim_and_zeroi2v(other):
    video = _video()
    logits = []
    for names in (("atp", other), (other, "atp")):
        model = _build(names)
        assert (model.pool, model.project) == ("embed-mean", False)
        assert model.aggregator.embedding.in_features == model.backbone.width
        with torch.no_grad():
            logits.append(model.eval()(video))
    assert logits[0].shape == (2, 3) and torch.isfinite(logits[0]).all()


# -- how the readout is settled ----------------------------------------------------------------------

def test_methods_are_applied_in_one_canonical_order():
    for names in (["st-adapter", "atp"], ["atp", "st-adapter"]):
        assert [spec.name for spec, _ in make_configs(names, {})] == ["st-adapter", "atp"]
    # tower methods (by name), then learned text prompts, then the readout owner, then training-only methods
    order = [spec.name for spec, _ in make_configs(["singularity", "actionclip", "coop", "vpt", "lora"], {})]
    assert order == ["lora", "vpt", "coop", "actionclip", "singularity"]


def test_the_per_frame_readout_wins_over_st_adapters_token_mean(caplog):
    with caplog.at_level(logging.INFO, logger="adaptvid"):
        models = [_build(names) for names in (("aim", "st-adapter"), ("st-adapter", "aim"))]
    assert all((m.pool, m.project) == ("embed-mean", False) for m in models)
    assert "keeping the per-frame readout" in caplog.text
    alone = _build(("st-adapter",))
    assert (alone.pool, alone.project) == ("token-mean", False)
    with_coop = _build(("coop", "st-adapter"))   # no per-frame reader: st-adapter's pooling, projected for the texts
    assert (with_coop.pool, with_coop.project) == ("token-mean", True)


def _trainable(model, name):
    return dict(model.named_parameters())[name].requires_grad


def test_head_only_tower_parameters_train_only_when_the_readout_uses_them():
    proj, norm = "backbone.tower.proj", "backbone.tower.ln_post.weight"
    assert _trainable(_build(("full",)), proj)
    model = _build(("full", "st-adapter"))          # no projection in st-adapter's readout: proj is left frozen
    assert not _trainable(model, proj) and _trainable(model, norm)
    model = _build(("full", "st-adapter", "coop"))   # the text classifier projects again: proj trains again
    assert _trainable(model, proj)
    model = _build(("aim", "evl"))                   # evl's decoder never calls the final norm
    assert not _trainable(model, norm)


def test_coops_context_trains_inside_singularitys_sampled_template_classifier():
    model = _build(("coop", "singularity"), singularity_classifier="text")
    assert isinstance(model.head, TextClassifier) and model.head.prompt is not None
    grads = _training_step_gradients(model)
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if n.startswith("head.prompt."))


# -- refusals that name the reason ---------------------------------------------------------------------

@pytest.mark.parametrize("names, options, match", [
    (("atp", "singularity"), {}, "selector would get no gradient"),
    (("aim", "dist"), {}, "dist runs the image tower on one frame in 2 only, but whole clips .* aim's temporal"),
    (("evl", "singularity"), {}, "evl's decoder"),
    (("evl", "zeroi2v"), {}, "temporal_cross_attention=False"),
    (("lora", "zeroi2v"), {}, "do not see lora's update"),
    (("coop", "evl"), {}, "outside CLIP's 32-wide joint space"),
    (("coop", "x-clip"), {}, "x-clip sets its own text classifier"),
    (("open-vclip", "zeroi2v"), {}, "both claim the model's attention"),
], ids=lambda value: "+".join(value) if isinstance(value, tuple) else "")
def test_incompatible_pairs_are_refused_with_the_reason_in_either_order(names, options, match):
    for order in (names, names[::-1]):
        with pytest.raises(ValueError, match=match):
            _build(order, **options)


def test_options_that_remove_the_conflict_let_the_pair_build():
    _build(("atp", "singularity"), train_frames=2)
    _build(("aim", "singularity"), temporal_embedding=False)
    _build(("evl", "zeroi2v"), temporal_cross_attention=False)
