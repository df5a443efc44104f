"""Adapter-only checkpoints: trainable tensors as safetensors + a JSON config.

Layout of a checkpoint folder::

    adapter.safetensors   the parameters with requires_grad=True, by their model names, and the
                          persistent buffers of the methods' own modules (BatchNorm running statistics)
    adaptvid.json         backbone name, weights spec, methods and their configs, classes, version, and
                          ``frozen_fingerprint``: a cheap fingerprint of the frozen tower tensors the
                          checkpoint does not hold (``fingerprint.py``), checked when it is loaded

A training run's folder also holds ``trainer_state.pt`` and the manifest ``checkpoint.json``, written
as one unit by ``unit.py``. Nothing here unpickles: safetensors holds tensors only, the config is JSON.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..version import __version__

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adaptvid.json"
MANIFEST_FILE = "checkpoint.json"   # a training checkpoint's manifest (unit.py)
FORMAT = "adaptvid-adapter"
FORMAT_VERSION = 1
logger = logging.getLogger("adaptvid")


FROZEN_PREFIXES = ("backbone.tower.", "text.")  # the library towers: rebuilt from their own weights, never saved


def saved_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """What a checkpoint holds: the trainable parameters, plus the whole tower once methods were merged into it."""
    merged = bool(getattr(model, "merged_methods", None))
    return {name: p for name, p in model.named_parameters()
            if p.requires_grad or (merged and name.startswith("backbone.tower."))}


def saved_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The persistent buffers of the methods' own modules (e.g. BatchNorm running mean, variance and
    batch count), by their ``state_dict`` names: every persistent buffer outside the frozen library
    towers (``backbone.tower.``, ``text.``). A checkpoint holds them next to the trainable parameters,
    so a module with running state comes back as it was trained."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return {name: t for name, t in model.state_dict(keep_vars=True).items()
            if isinstance(t, torch.Tensor) and name not in parameters and not name.startswith(FROZEN_PREFIXES)}


def rebuilt_buffers(model: torch.nn.Module) -> set[str]:
    """Saved buffers that a module rebuilds identically when it is built (it names them in its class attribute
    ``rebuilt_buffers``, e.g. vita-clip's frozen ``cls_proj`` drawn from a fixed seed): a checkpoint written
    before they were saved lacks them, and loads with the rebuilt values."""
    return {f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
            for name in getattr(module, "rebuilt_buffers", ())}


def saved_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Everything a checkpoint holds: ``saved_parameters`` and ``saved_buffers``, by their model names."""
    return {**saved_parameters(model), **saved_buffers(model)}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``save_adapter`` writes (detached CPU copies): the saved parameters and buffers."""
    return {name: t.detach().cpu().contiguous().clone() for name, t in saved_tensors(model).items()}


def model_config(model, class_names: Optional[list[str]] = None) -> dict:
    from .fingerprint import frozen_fingerprint

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adaptvid_version": __version__,
        "backbone": model.backbone.name,
        "weights": getattr(model, "weights", None),
        "num_frames": model.num_frames,
        "num_classes": model.num_classes,
        "class_names": _names(class_names if class_names is not None else getattr(model, "class_names", None)),
        "pool": model.pool,
        "project": model.project,
        "head_dropout": model.dropout.p,
        "methods": [{"name": name, "config": dataclasses.asdict(cfg)} for name, cfg in model.methods],
        "merged": list(getattr(model, "merged_methods", [])),
        "init_from": getattr(model, "init_from_path", None),  # frozen towers taken from that checkpoint
        "preprocess": dataclasses.asdict(model.backbone.preprocess),
        "frozen_fingerprint": frozen_fingerprint(model, saved_tensors(model)),
    }


def _names(class_names) -> Optional[list[str]]:
    return list(class_names) if class_names is not None else None


def config_text(model, class_names=None, extra: Optional[dict] = None, directory=None) -> str:
    """The ``adaptvid.json`` text ``save_adapter`` writes (serialised first: a bad value fails before any
    file is written). Warns when the checkpoint will not be reproducible (a random frozen tower)."""
    config = model_config(model, class_names)
    frozen_tower = any(not p.requires_grad for p in model.backbone.tower.parameters())
    if config["weights"] == "random" and frozen_tower:
        logger.warning("%s: the backbone %r was randomly initialised and is not saved; load_model will rebuild "
                       "it with other random weights, so this checkpoint cannot be reproduced", directory,
                       model.backbone.name)
    if extra:
        config["extra"] = extra
    return json.dumps(config, indent=2) + "\n"


def write_weights(tensors: dict[str, torch.Tensor], path) -> None:
    """``adapter.safetensors``: byte-identical for identical tensors (one metadata key only: safetensors
    writes several in no fixed order)."""
    save_file(tensors, str(path), metadata={"format": "pt"})


def save_adapter(model, directory, class_names=None, extra: Optional[dict] = None) -> Path:
    """Write ``adapter.safetensors`` and ``adaptvid.json`` into ``directory`` (created if needed).

    Files are written to a temporary name and renamed, so an interrupted save
    never leaves a half-written checkpoint in place of a good one. Saving over a training run's
    checkpoint makes it a plain one: its manifest (``checkpoint.json``) no longer describes the files
    and is removed first.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = config_text(model, class_names, extra, directory)
    tmp_weights, tmp_config = directory / (WEIGHTS_FILE + ".tmp"), directory / (CONFIG_FILE + ".tmp")
    write_weights(trainable_state(model), tmp_weights)
    tmp_config.write_text(text)
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_config, directory / CONFIG_FILE)
    return directory


def read_config(directory) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no adaptvid checkpoint here (expected {CONFIG_FILE} and {WEIGHTS_FILE}, "
            "as written by model.save_adapter or adaptvid adapt --output)"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: not an adaptvid adapter config (format={config.get('format')!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer adaptvid (format {config['format_version']}); upgrade adaptvid")
    return config


def read_tensors(directory, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of ``directory/adapter.safetensors``; an unreadable file is a ValueError naming it."""
    path = Path(directory) / WEIGHTS_FILE
    try:
        return load_file(str(path), device=map_location)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error


def load_tensors(model, tensors: dict[str, torch.Tensor], path) -> None:
    """Load checkpoint ``tensors`` (read from ``path``) into the model's ``saved_tensors``, refusing any
    mismatch: a missing, unexpected or wrongly shaped tensor. ``rebuilt_buffers`` may be missing (an older
    checkpoint): they keep the values the model was built with."""
    expected = saved_tensors(model)
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors) - rebuilt_buffers(model))
    wrong_shape = [f"{n} {tuple(tensors[n].shape)} != {tuple(p.shape)}"
                   for n, p in expected.items() if n in tensors and tensors[n].shape != p.shape]
    if unexpected or missing or wrong_shape:
        raise ValueError(
            f"{path}: tensors do not match the rebuilt model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong_shape[:5]}); was it saved with other options or another "
            "adaptvid version?"
        )
    model.load_state_dict(tensors, strict=False)


def load_trainable(model, directory, map_location: str = "cpu") -> None:
    """Load ``adapter.safetensors`` into the model's trainable parameters and its methods' buffers
    (``saved_tensors``), refusing any mismatch: a missing, unexpected or wrongly shaped tensor. A
    checkpoint written before buffers were saved still loads into a model that has none."""
    load_tensors(model, read_tensors(directory, map_location), Path(directory) / WEIGHTS_FILE)
