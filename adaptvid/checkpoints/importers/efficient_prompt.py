"""Import the official Efficient-Prompt checkpoints (ju-chen/Efficient-Prompt) as ``efficient-prompt`` models.

The official trainer (``src/train.py``) saves ``{'state_dict': CLIPrompt.state_dict(), 'optimizer', 'iteration'}``
(the released ``HMDB_best.pth.tar`` is one): the frozen CLIP under ``clipmodel.`` (both towers, OpenAI-CLIP
layout) and the trained prompt modules, so this is a full-form import. Keys (``src/model.py:CLIPrompt``):

======================================================  ============================================================
official                                                adaptvid
======================================================  ============================================================
``clipmodel.visual.*``, ``clipmodel.token_embedding``,  the CLIP towers (OpenAI-CLIP layout: ``split_openai_clip``)
``clipmodel.transformer.*``, ...
``embedding.weight`` (77 x W: the prompt sequence)      ``head.prompt.embedding.weight``
``temporalEmbedding.weight`` (T x E)                    ``aggregator.position.weight``
``temporalModelling.resblocks.j.*``                     ``aggregator.blocks.j.*`` (same names)
======================================================  ============================================================

Not in the tensors (the 77-row table does not say where the class name goes), so options with the
released model's values as defaults (its README command): ``prefix`` 16, ``postfix`` 16, ``tfm_heads`` 8;
``heads`` / ``text_heads`` override the towers' head counts (width // 64). The class names are the
user's (``class_names=``), in the order of the official action list (``HMDB51_action.list`` for the release).
"""
from __future__ import annotations

import re

from .base import CheckpointImportError, Conversion, ImportFormat, register_format
from .openai_clip import split_openai_clip

NAME = "efficient-prompt"
_BLOCK = re.compile(r"^temporalModelling\.resblocks\.(\d+)\.(.+)$")
_TOWER = "clipmodel."


def _tower_options(options: dict) -> dict:
    return {k: options[k] for k in ("heads", "text_heads") if k in options}


def convert(state: dict, options: dict) -> Conversion:
    if "embedding.weight" not in state or "temporalEmbedding.weight" not in state:
        raise CheckpointImportError(
            "efficient-prompt: no prompt modules found (expected 'embedding.weight' and 'temporalEmbedding.weight', "
            "as src/train.py saves CLIPrompt); check --format")
    tensors, consumed, layers = {}, set(), set()
    for key, value in state.items():
        match = _BLOCK.match(key)
        if match is not None:
            tensors[f"aggregator.blocks.{match.group(1)}.{match.group(2)}"] = value
            layers.add(int(match.group(1)))
            consumed.add(key)
    if not layers:
        raise CheckpointImportError("efficient-prompt: no temporal transformer ('temporalModelling.resblocks.0.*'); "
                                    "a model trained with --temporal 0 (mean pooling) is not what adaptvid's method builds")
    tensors["head.prompt.embedding.weight"] = state["embedding.weight"]
    tensors["aggregator.position.weight"] = state["temporalEmbedding.weight"]
    consumed |= {"embedding.weight", "temporalEmbedding.weight"}

    clip = {k[len(_TOWER):]: v for k, v in state.items() if k.startswith(_TOWER)}
    tower, rest = split_openai_clip(clip, **_tower_options(options))
    if tower is None or tower.config.get("text_cfg") is None:
        raise CheckpointImportError("efficient-prompt: 'clipmodel.*' holds no complete CLIP (image and text towers)")
    consumed |= {_TOWER + k for k in clip if k not in rest}
    method_options = {"prefix": int(options.get("prefix", 16)), "postfix": int(options.get("postfix", 16)),
                      "tfm_layers": len(layers), "tfm_heads": int(options.get("tfm_heads", 8))}
    return Conversion(method=NAME, options=method_options, tensors=tensors,
                      num_frames=state["temporalEmbedding.weight"].shape[0], tower=tower, consumed=consumed)


register_format(ImportFormat(
    name=NAME,
    help="src/train.py checkpoint {'state_dict': CLIPrompt}: frozen CLIP + 77-row prompt table + temporal transformer",
    releases=("HMDB_best.pth.tar",),
    convert=convert,
    source="https://github.com/ju-chen/Efficient-Prompt",
))
