"""adaptvid: turn frozen image foundation models into video models.

The layers, lowest first (each imports only from those below it; tests/test_layers.py checks):
data, backbones < text < methods < model < checkpoints < tasks < train < runner < cli.

The names below are imported on first use (PEP 562), so ``import adaptvid`` and
``adaptvid --version`` cost nothing until torch is needed.
"""
from __future__ import annotations

import importlib

from .version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "BackboneLoadError": "backbones", "create_backbone": "backbones", "list_backbones": "backbones",
    "get_method": "methods", "list_methods": "methods", "register_method": "methods",
    "VideoModel": "model", "build_model": "model", "count_parameters": "model", "merge": "model",
    "set_classes": "model", "zero_shot_model": "model",
    "init_from": "checkpoints", "load_model": "checkpoints", "load_xclip": "checkpoints",
    "export_peft_adapter": "checkpoints", "load_peft_adapter": "checkpoints",
    "import_checkpoint": "checkpoints.importers", "CheckpointImportError": "checkpoints.importers",
    "adapt": "runner", "embed": "runner", "evaluate": "runner", "merge_checkpoint": "runner", "predict": "runner",
    "resolve_settings": "runner",
}
__all__ = ["__version__", *_EXPORTS]
_SUBPACKAGES = {"backbones", "checkpoints", "cli", "data", "methods", "model", "retrieval", "runner", "tasks", "text",
                "train"}


def __getattr__(name: str):
    if name in _SUBPACKAGES:   # `import adaptvid; adaptvid.data.open_video(...)` as before the lazy exports
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value   # once imported, an ordinary attribute
        return value
    raise AttributeError(f"module 'adaptvid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
