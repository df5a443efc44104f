"""Importing the methods' released checkpoints: safe reading, the format registry, strict loading.

Each format module (one per official repository) turns the official state dict into a
:class:`Conversion`: the adaptvid method and options it corresponds to, the method tensors under
adaptvid's names, and, when the checkpoint holds its frozen tower too (the *full* form), that tower.
``importing.import_checkpoint`` builds the model and loads it strictly: a key the format did not consume,
a model tensor it did not provide, or a shape that differs is an error that lists them — never a
model that silently runs on its initial weights.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)

# the wrappers official trainers put around the state dict, in the order they are looked for
WRAPPERS = ("state_dict", "model", "model_state", "module")
SHOWN = 10   # keys listed in an error before "... and N more"


class CheckpointImportError(ValueError):
    """A checkpoint that cannot be imported as asked; the message names the file and what to do."""


@dataclass
class TowerSpec:
    """The frozen tower found in a full-form checkpoint."""
    kind: str                          # "openai-clip": conv1, class_embedding, transformer.resblocks.i. ...
    config: dict                       # the open_clip model config inferred from the tensors
    tensors: dict[str, torch.Tensor]   # the tower's tensors in OpenAI-CLIP names ("visual.*", text keys)


@dataclass
class Conversion:
    method: str                              # adaptvid method spec, e.g. "st-adapter"
    options: dict                            # method options for build_model
    tensors: dict[str, torch.Tensor]         # method modules and head, by adaptvid's state_dict names
    num_classes: Optional[int] = None
    num_frames: int = 8
    tower: Optional[TowerSpec] = None        # None: method-only; the user's backbone supplies the tower
    consumed: set[str] = field(default_factory=set)   # official keys used; any other is "unexpected"
    class_names: Optional[list[str]] = None
    merge: bool = False                      # a reparameterised checkpoint: merge the methods after loading


@dataclass
class ImportFormat:
    name: str
    help: str
    releases: tuple[str, ...]
    convert: Callable[[dict, dict], Conversion]
    source: str


FORMATS: dict[str, ImportFormat] = {}


def register_format(fmt: ImportFormat) -> None:
    FORMATS[fmt.name] = fmt


# one module per official repository; each registers its format when imported
FORMAT_MODULES = ("st_adapter", "aim", "evl", "zeroi2v", "uniformerv2", "efficient_prompt", "vita_clip",
                  "xclip_videox", "vifi_clip", "actionclip", "clip4clip")


def load_formats() -> None:
    package = __name__.rpartition(".")[0]
    for module in FORMAT_MODULES:
        if importlib.util.find_spec(f"{package}.{module}") is not None:
            importlib.import_module(f"{package}.{module}")


def list_formats() -> dict[str, ImportFormat]:
    load_formats()
    return dict(FORMATS)


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def _load_file(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        # Released checkpoints are pickles: tensors and plain containers only, no code is run.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as error:
        needed = re.search(r"GLOBAL (\S+)", str(error))
        what = f"it needs {needed.group(1)}" if needed else str(error).splitlines()[0]
        raise CheckpointImportError(
            f"{path}: cannot be loaded safely: it holds more than tensors and plain containers ({what}). "
            "adaptvid never unpickles code. In an environment you trust with that file, save its tensors alone: "
            "python -c \"import torch; c = torch.load('IN', weights_only=False); "
            "torch.save(c.get('model', c.get('state_dict', c)), 'OUT.pth')\" and import OUT.pth"
        ) from error


def _is_state(obj) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, (torch.Tensor, Mapping)) for v in obj.values())


def read_checkpoint(source) -> dict:
    """An official checkpoint's state dict: ``source`` is a file (``.pth``/``.pt``/``.bin``/``.pyth`` read
    with ``torch.load(weights_only=True)`` only; ``.safetensors``) or a mapping. The trainers' wrappers
    (``model``, ``state_dict``, ``model_state``, ``module``) and DDP's ``module.`` prefixes are removed;
    bookkeeping beside the wrapped state (epoch, optimizer, config) is dropped."""
    where = "the given state dict" if isinstance(source, Mapping) else str(source)
    obj = source if isinstance(source, Mapping) else _load_file(Path(source).expanduser())
    if not isinstance(obj, Mapping):
        raise CheckpointImportError(f"{where}: holds a {type(obj).__name__}, not a state dict")
    state = dict(obj)
    for _ in range(3):   # wrappers can nest ({'model': {'state_dict': ...}})
        inner = next((state[w] for w in WRAPPERS if _is_state(state.get(w))), None)
        if inner is None:
            break
        state = dict(inner)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(isinstance(v, torch.Tensor) or _is_state(v) for v in state.values()):
        raise CheckpointImportError(f"{where}: holds no tensors (top-level keys: {_listed(state)})")
    return state


def get_format(name: str) -> ImportFormat:
    formats = list_formats()
    if name not in formats:
        raise CheckpointImportError(f"unknown checkpoint format {name!r}; known: {', '.join(sorted(formats))}")
    return formats[name]
