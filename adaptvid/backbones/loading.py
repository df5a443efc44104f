"""Backbone names -> built backbones, with the libraries' own weight loading.

``weights``: ``None`` loads the name's default pretrained weights from its hub
(tiny test backbones have none: they are built from a fixed seed so that an
adapter-only checkpoint always reloads onto the same frozen weights);
``"random"`` builds a randomly initialised tower; any other string is a local
file or folder read by the library's own loader.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .base import Backbone
from .errors import BackboneLoadError, _cause, _check_local, _fail, _unreadable
from .hub import _hub_advice, _prepare_hub

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_SEED = 1234  # not 0: a user seeding 0 should still get a different "random" tower


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


def _looks_local(source: str) -> bool:
    """A transformers source that is a path rather than a hub repo id ('namespace/name')."""
    return os.path.exists(source) or source.startswith(("/", "./", "../", "~")) or source.count("/") > 1


# -- open_clip ----------------------------------------------------------------

class _DropRandomInitWarning(logging.Filter):
    """open_clip's warning for a tower built without pretrained weights: expected for tiny and random builds."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _open_clip_logging(random_init: bool = False):
    """open_clip logs through the root logger with module-level ``logging.info/warning(...)``, each of which calls
    ``logging.basicConfig()`` (a stderr handler left on the root logger) when the root has no handler. For the
    call, a root without handlers gets Python's last-resort handler (warnings still reach stderr, as with no
    logging configured), removed afterwards; with ``random_init`` open_clip's random-init warning is dropped."""
    root = logging.getLogger()
    added = None
    if not root.handlers:
        added = logging.lastResort or logging.NullHandler()
        root.addHandler(added)
    quiet = _DropRandomInitWarning() if random_init else None
    if quiet is not None:
        root.addFilter(quiet)
    try:
        yield
    finally:
        if quiet is not None:
            root.removeFilter(quiet)
        if added is not None:
            root.removeHandler(added)


def _tag_uses_quick_gelu(arch: str, tag: Optional[str]) -> bool:
    """Weights trained with QuickGELU (OpenAI's CLIP) need it: open_clip 3 only warns about the mismatch
    and builds the architecture's GELU, which computes other features from the same weights."""
    import open_clip

    return bool(tag) and bool((open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu", False))


def _open_clip(name: str, arch: str, tag: Optional[str], weights: Optional[str], seeded: bool = False) -> Backbone:
    import open_clip

    from .openclip import OpenClipBackbone

    local = weights not in (None, "random")
    if weights is None:
        pretrained, tried = tag, f"open_clip {arch} with pretrained weights {tag!r}"
    elif weights == "random":
        pretrained, tried = None, f"open_clip {arch} (random init)"
    else:
        _check_local(name, weights)
        pretrained, tried = weights, f"open_clip {arch} weights from {weights!r}"
    if weights is None and tag is not None:
        _prepare_hub()
    try:
        with _seeded(TINY_SEED) if seeded else contextlib.nullcontext(), _open_clip_logging(pretrained is None):
            model = open_clip.create_model(arch, pretrained=pretrained, require_pretrained=pretrained is not None,
                                           force_quick_gelu=_tag_uses_quick_gelu(arch, tag))
    except BackboneLoadError:
        raise
    except Exception as error:  # hub, file format, config errors
        if local:
            expected = (f"a state dict of an open_clip {arch} model: a file written by "
                        "torch.save(model.state_dict()) (.pt/.bin) or a .safetensors file")
            raise _unreadable(name, weights, "open_clip", expected, error) from error
        raise _fail(name, tried, error, hub=weights is None) from error
    hf_tokenizer = ((open_clip.get_model_config(arch) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if hf_tokenizer:
        _prepare_hub()
    try:
        with _open_clip_logging():
            tokenizer = open_clip.get_tokenizer(arch)
    except Exception as error:
        raise _fail(name, f"the open_clip tokenizer of {arch}", error, hub=bool(hf_tokenizer)) from error
    return OpenClipBackbone(name, model, tokenizer)


def _add_tiny_configs() -> None:
    import open_clip

    if "adaptvid-tiny-clip" not in open_clip.list_models():
        with _open_clip_logging():
            open_clip.add_model_config(CONFIG_DIR)


OPENAI_CLIP = {"clip": "ViT-B-16", "clip-b32": "ViT-B-32", "clip-l14": "ViT-L-14"}

for _short, _arch in OPENAI_CLIP.items():
    _register(_short, f"CLIP {_arch} with OpenAI weights, via open_clip")(
        lambda name, weights, _arch=_arch: _open_clip(name, _arch, "openai", weights)
    )


@_register("tiny-clip", "tiny open_clip CLIP (width 64, 2 layers, patch 16, 64 px) for tests and the demo")
def _tiny_clip(name: str, weights: Optional[str]) -> Backbone:
    _add_tiny_configs()
    return _open_clip(name, "adaptvid-tiny-clip", None, "random" if weights in (None, "random") else weights,
                      seeded=weights is None)


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

TRANSFORMERS_FOLDER = ("a folder written by save_pretrained (or a hub snapshot) holding config.json and "
                       "model.safetensors or pytorch_model.bin")


def _check_transformers_folder(name: str, path: str) -> None:
    """A local transformers checkpoint is a folder with a config.json: say so before transformers does (it
    takes a file for a malformed hub repo id)."""
    _check_local(name, path)
    if not os.path.isdir(path):
        raise _unreadable(name, path, "transformers", f"{TRANSFORMERS_FOLDER}, not a single file")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise _unreadable(name, path, "transformers", f"{TRANSFORMERS_FOLDER}; this folder has no config.json")


def _random_config(name: str, source: str):
    """The config of a randomly initialised transformers tower: ``source``'s config.json (a local folder, or a
    hub repo through the hub cache)."""
    from transformers import AutoConfig

    local = _looks_local(source)
    if local:
        _check_local(name, source)
    else:
        _prepare_hub()
    try:
        return AutoConfig.from_pretrained(source)
    except Exception as error:
        prefix = name.partition(":")[0] + ":" if ":" in name else "hf:"
        message = (f"backbone {name!r}: weights='random' builds a randomly initialised transformers tower, which "
                   f"still needs its config (config.json); it could not be read from {source!r}. "
                   f"{prefix}<local folder with config.json> works offline (copy config.json from the model's hub "
                   "repo, or write one with the config class's save_pretrained(folder)).")
        if not local:
            message += "\n" + _hub_advice()
        raise BackboneLoadError(message + _cause(error)) from error


def _hf_clip(name: str, source: str, weights: Optional[str]) -> Backbone:
    from transformers import CLIPModel

    from .hf_clip import HFClipBackbone

    location = source if weights in (None, "random") else weights
    local = weights not in (None, "random") or _looks_local(source)
    if weights == "random":
        model = CLIPModel(_random_config(name, source))
    else:
        if local:
            _check_transformers_folder(name, location)
        else:
            _prepare_hub()
        try:
            model = CLIPModel.from_pretrained(location)
        except Exception as error:
            if local:
                expected = f"{TRANSFORMERS_FOLDER} (of a CLIPModel)"
                raise _unreadable(name, location, "transformers", expected, error) from error
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
    source = name[len("hf-xclip:"):]
    location = source if weights in (None, "random") else weights
    local = weights not in (None, "random") or _looks_local(source)
    if weights == "random":
        _random_config(name, source)   # a clear message when the config cannot be had
    elif local:
        _check_transformers_folder(name, location)
    else:
        _prepare_hub()
    try:
        return _load_hf_xclip(name, source, weights)
    except BackboneLoadError as error:
        if local and weights != "random" and error.__cause__ is not None:  # a local folder: no hub advice
            raise _unreadable(name, location, "transformers", f"{TRANSFORMERS_FOLDER} (of an XCLIPModel)",
                              error.__cause__) from error.__cause__
        raise


def _load_hf_xclip(name: str, source: str, weights: Optional[str]) -> Backbone:
    """``hf-xclip:<folder or hub id>``: an XCLIPModel through transformers' own loader."""
    from transformers import AutoConfig, XCLIPModel

    from .hf_xclip import HFXClipBackbone

    location = source if weights in (None, "random") else weights
    if weights not in (None, "random"):
        _check_local(name, weights)
    try:
        if weights == "random":
            model = XCLIPModel(AutoConfig.from_pretrained(source))
        else:
            model = XCLIPModel.from_pretrained(location)
    except Exception as error:
        raise _fail(name, f"transformers XCLIPModel from {location!r}", error) from error
    tokenizer, processor = saved_tokenizer(location, model.config.text_config.vocab_size), None
    with contextlib.suppress(Exception):
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(location)
    return HFXClipBackbone(name, model, tokenizer, processor)


# -- timm -----------------------------------------------------------------------

def _timm(name: str, model_name: str, weights: Optional[str], seeded: bool = False, **kwargs) -> Backbone:
    import timm

    from .timm_vit import TimmBackbone

    kwargs = dict(num_classes=0, **kwargs)
    hub = weights is None and not seeded
    if hub:
        kwargs["pretrained"], tried = True, f"timm {model_name} pretrained weights"
        _prepare_hub()
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
        if weights not in (None, "random"):
            raise _unreadable(name, weights, "timm", f"a {model_name} checkpoint: a state dict in a .safetensors, "
                              ".pth/.pt/.bin (torch.save) or .npz file", error) from error
        raise _fail(name, tried, error, hub=hub) from error
    return TimmBackbone(name, model)


@_register("timm:", "a timm VisionTransformer: timm:<model name>, e.g. timm:vit_base_patch16_224.augreg_in21k", prefix=True)
def _timm_any(name: str, weights: Optional[str]) -> Backbone:
    return _timm(name, name[len("timm:"):], weights)


TINY_VIT_KWARGS = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)


@_register("tiny-vit", "tiny timm ViT (width 64, 2 layers, patch 16, 64 px) for tests")
def _tiny_vit(name: str, weights: Optional[str]) -> Backbone:
    return _timm(name, "vit_tiny_patch16_224", weights, seeded=True, **TINY_VIT_KWARGS)


@_register("open_clip-dir:", "an open_clip CLIP from a folder (open_clip_config.json + open_clip_model.safetensors), "
          "as adaptvid import writes for a released checkpoint's tower", prefix=True)
def _open_clip_dir(name: str, weights: Optional[str]) -> Backbone:
    from .open_clip_folder import open_clip_folder

    return open_clip_folder(name, weights)


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
