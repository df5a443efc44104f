"""An open_clip CLIP described by a folder rather than a registered architecture: backbone
``open_clip-dir:<folder>`` reads ``open_clip_config.json`` (the keyword arguments of ``open_clip.CLIP``)
and ``open_clip_model.safetensors`` from it. ``adaptvid import`` writes such a folder for a tower taken
from a released checkpoint, whose shape need not be one of open_clip's named models."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .errors import BackboneLoadError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# A vision-only tower still needs open_clip's text tower to exist: the smallest one (never used).
PLACEHOLDER_TEXT = dict(width=64, heads=1, layers=1, context_length=77, vocab_size=1000)


def build_clip(config: dict) -> torch.nn.Module:
    """``open_clip.CLIP`` from a config dict (``text_cfg`` None: a fixed placeholder text tower)."""
    import open_clip

    text = config.get("text_cfg") or PLACEHOLDER_TEXT
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.CLIP(embed_dim=config["embed_dim"], vision_cfg=config["vision_cfg"], text_cfg=text,
                               quick_gelu=config.get("quick_gelu", True))
    if config.get("no_projection"):
        model.visual.proj = None
    model.visual.image_mean, model.visual.image_std = OPENAI_MEAN, OPENAI_STD
    return model


def tokenizer_for(config: dict):
    from open_clip.tokenizer import SimpleTokenizer

    text = config.get("text_cfg")
    return SimpleTokenizer(context_length=text["context_length"]) if text else None


def write_folder(model: torch.nn.Module, config: dict, folder) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    return folder


def open_clip_folder(name: str, weights: Optional[str]):
    from safetensors.torch import load_file

    from .openclip import OpenClipBackbone

    folder = Path(name[len("open_clip-dir:"):]).expanduser()
    if weights not in (None, "random"):
        raise BackboneLoadError(f"backbone {name!r}: the folder holds its weights; --weights is not used with it")
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / file).is_file():
            raise BackboneLoadError(f"backbone {name!r}: {folder / file} is missing (a folder written by adaptvid "
                                    "import holds it; was the checkpoint folder moved? then re-run adaptvid import)")
    config = json.loads((folder / CONFIG_FILE).read_text())
    model = build_clip(config)
    if weights is None:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return OpenClipBackbone(name, model, tokenizer_for(config))
