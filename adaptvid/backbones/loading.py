"""Backbone names -> built backbones, with the libraries' own weight loading.

``weights``: ``None`` loads the name's default pretrained weights from its hub
(tiny test backbones have none: they are built from a fixed seed so that an
adapter-only checkpoint always reloads onto the same frozen weights);
``"random"`` builds a randomly initialised tower; any other string is a local
file or folder read by the library's own loader.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .base import Backbone

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_SEED = 1234  # not 0: a user seeding 0 should still get a different "random" tower


class BackboneLoadError(RuntimeError):
    """A backbone or its weights could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    help: str
    build: Callable[[str, Optional[str]], Backbone]


_BACKBONES: dict[str, BackboneEntry] = {}
_PREFIXES: dict[str, BackboneEntry] = {}


def _register(name: str, help: str, prefix: bool = False):
    def wrap(fn):
        entry = BackboneEntry(name, help, fn)
        (_PREFIXES if prefix else _BACKBONES)[name] = entry
        return fn
    return wrap


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _fail(name: str, tried: str, error: Exception) -> BackboneLoadError:
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return BackboneLoadError(
        f"backbone {name!r}: could not load {tried} ({type(error).__name__}: {reason}). "
        "If the hub is unreachable, download the weights elsewhere and pass the local file or folder "
        "with --weights PATH (Python: weights='PATH'), or use weights='random' for a randomly "
        "initialised tower."
    )


def _check_local(name: str, weights: str) -> None:
    if not os.path.exists(weights):
        raise BackboneLoadError(
            f"backbone {name!r}: weights file or folder {weights!r} does not exist; "
            "pass an existing local path, 'random', or nothing for the hub default"
        )


# -- open_clip ----------------------------------------------------------------

def _open_clip(name: str, arch: str, tag: Optional[str], weights: Optional[str], seeded: bool = False) -> Backbone:
    import open_clip

    from .openclip import OpenClipBackbone

    if weights is None:
        pretrained, tried = tag, f"open_clip {arch} with pretrained weights {tag!r}"
    elif weights == "random":
        pretrained, tried = None, f"open_clip {arch} (random init)"
    else:
        _check_local(name, weights)
        pretrained, tried = weights, f"open_clip {arch} weights from {weights!r}"
    try:
        with _seeded(TINY_SEED) if seeded else contextlib.nullcontext():
            model = open_clip.create_model(arch, pretrained=pretrained, require_pretrained=pretrained is not None)
        tokenizer = open_clip.get_tokenizer(arch)
    except BackboneLoadError:
        raise
    except Exception as error:  # hub, file format, config errors: one clear line
        raise _fail(name, tried, error) from error
    return OpenClipBackbone(name, model, tokenizer)


def _add_tiny_configs() -> None:
    import open_clip

    if "adaptvid-tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


OPENAI_CLIP = {"clip": "ViT-B-16", "clip-b32": "ViT-B-32", "clip-l14": "ViT-L-14"}

for _short, _arch in OPENAI_CLIP.items():
    _register(_short, f"CLIP {_arch} with OpenAI weights, via open_clip")(
        lambda name, weights, _arch=_arch: _open_clip(name, _arch, "openai", weights)
    )


@_register("tiny-clip", "tiny open_clip CLIP (width 64, 2 layers, patch 16, 64 px) for tests and the demo")
def _tiny_clip(name: str, weights: Optional[str]) -> Backbone:
    _add_tiny_configs()
    return _open_clip(name, "adaptvid-tiny-clip", None, None if weights in (None, "random") else weights, seeded=weights is None)


@_register("open_clip:", "any open_clip model: open_clip:<arch>/<pretrained tag>, e.g. open_clip:ViT-B-16/laion2b_s34b_b88k", prefix=True)
def _open_clip_any(name: str, weights: Optional[str]) -> Backbone:
    spec = name[len("open_clip:"):]
    arch, _, tag = spec.partition("/")
    if not arch or (weights is None and not tag):
        raise BackboneLoadError(
            f"backbone {name!r}: write open_clip:<arch>/<pretrained tag>, e.g. open_clip:ViT-B-16/openai "
            "(the tag may be omitted only with --weights PATH or random)"
        )
    return _open_clip(name, arch, tag or None, weights)


# -- transformers ---------------------------------------------------------------

def _hf_clip(name: str, source: str, weights: Optional[str]) -> Backbone:
    from transformers import AutoConfig, CLIPModel

    from .hf_clip import HFClipBackbone

    location = source if weights in (None, "random") else weights
    if weights not in (None, "random"):
        _check_local(name, weights)
    try:
        if weights == "random":
            model = CLIPModel(AutoConfig.from_pretrained(source))
        else:
            model = CLIPModel.from_pretrained(location)
    except Exception as error:
        raise _fail(name, f"transformers CLIPModel from {location!r}", error) from error
    tokenizer, processor = saved_tokenizer(location, model.config.text_config.vocab_size), None
    with contextlib.suppress(Exception):  # optional: not every saved folder carries it
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor.from_pretrained(location)
    return HFClipBackbone(name, model, tokenizer, processor)


def saved_tokenizer(location: str, vocab_size: int):
    """The tokenizer saved with a transformers model, or None when the folder (or hub repo) has none.

    transformers 5 builds an empty CLIPTokenizer from a folder without tokenizer files instead of failing;
    a tokenizer whose vocabulary does not match the text tower's is treated as missing.
    """
    tokenizer = None
    with contextlib.suppress(Exception):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer is not None and len(tokenizer) != vocab_size:
        tokenizer = None
    return tokenizer


@_register("hf:", "a transformers CLIPModel: hf:<hub repo id or local folder>, e.g. hf:openai/clip-vit-base-patch16", prefix=True)
def _hf_any(name: str, weights: Optional[str]) -> Backbone:
    return _hf_clip(name, name[len("hf:"):], weights)


def tiny_hf_clip_config():
    from transformers import CLIPConfig

    common = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
    return CLIPConfig(
        # OpenAI CLIP's BPE vocabulary and ids, so open_clip's bundled tokenizer serves it offline
        text_config=dict(vocab_size=49408, max_position_embeddings=77, pad_token_id=0, bos_token_id=49406,
                         eos_token_id=49407, **common),
        vision_config=dict(image_size=64, patch_size=16, **common),
        projection_dim=32,
    )


@_register("tiny-hf-clip", "tiny transformers CLIPModel (width 64, 2 layers, patch 16, 64 px) for tests")
def _tiny_hf(name: str, weights: Optional[str]) -> Backbone:
    from transformers import CLIPModel

    from .hf_clip import HFClipBackbone

    if weights not in (None, "random"):
        return _hf_clip(name, weights, weights)
    with _seeded(TINY_SEED) if weights is None else contextlib.nullcontext():
        model = CLIPModel(tiny_hf_clip_config())
    return HFClipBackbone(name, model)


@_register("hf-xclip:", "a transformers XCLIPModel's CLIP towers: hf-xclip:<hub repo id or local folder>; with method "
           "x-clip its message, MIT and prompt modules load too (adaptvid.load_xclip)", prefix=True)
def _hf_xclip_any(name: str, weights: Optional[str]) -> Backbone:
    from .hf_xclip import load_hf_xclip_backbone

    return load_hf_xclip_backbone(name, name[len("hf-xclip:"):], weights)


# -- timm -----------------------------------------------------------------------

def _timm(name: str, model_name: str, weights: Optional[str], seeded: bool = False, **kwargs) -> Backbone:
    import timm

    from .timm_vit import TimmBackbone

    kwargs = dict(num_classes=0, **kwargs)
    if weights is None and not seeded:
        kwargs["pretrained"], tried = True, f"timm {model_name} pretrained weights"
    elif weights in (None, "random"):
        kwargs["pretrained"], tried = False, f"timm {model_name} (random init)"
    else:
        _check_local(name, weights)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=weights))
        tried = f"timm {model_name} weights from {weights!r}"
    try:
        with _seeded(TINY_SEED) if seeded and weights is None else contextlib.nullcontext():
            model = timm.create_model(model_name, **kwargs)
    except Exception as error:
        raise _fail(name, tried, error) from error
    return TimmBackbone(name, model)


@_register("timm:", "a timm VisionTransformer: timm:<model name>, e.g. timm:vit_base_patch16_224.augreg_in21k", prefix=True)
def _timm_any(name: str, weights: Optional[str]) -> Backbone:
    return _timm(name, name[len("timm:"):], weights)


TINY_VIT_KWARGS = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)


@_register("tiny-vit", "tiny timm ViT (width 64, 2 layers, patch 16, 64 px) for tests")
def _tiny_vit(name: str, weights: Optional[str]) -> Backbone:
    return _timm(name, "vit_tiny_patch16_224", weights, seeded=True, **TINY_VIT_KWARGS)


# -- public -----------------------------------------------------------------------

def list_backbones() -> dict[str, str]:
    """Backbone names (and name patterns) with one line of help each."""
    names = {name: entry.help for name, entry in _BACKBONES.items()}
    names.update({f"{prefix}...": entry.help for prefix, entry in _PREFIXES.items()})
    return names


def create_backbone(name: str, weights: Optional[str] = None) -> Backbone:
    """Build a backbone by name; see the module docstring for ``weights``."""
    if weights is not None:
        weights = str(weights)
    if name in _BACKBONES:
        return _BACKBONES[name].build(name, weights)
    for prefix, entry in _PREFIXES.items():
        if name.startswith(prefix):
            return entry.build(name, weights)
    known = ", ".join(list(_BACKBONES) + [p + "..." for p in _PREFIXES])
    raise BackboneLoadError(f"unknown backbone {name!r}; known: {known} (adaptvid list shows them)")
