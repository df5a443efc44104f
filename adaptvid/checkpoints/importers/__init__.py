"""Importers for the methods' released checkpoints (``adaptvid import``, ``adaptvid.import_checkpoint``).

One module per official repository registers its format; ``load_formats`` imports them on first use.
"""
from __future__ import annotations

from .base import (CheckpointImportError, Conversion, ImportFormat, TowerSpec, list_formats, load_formats,
                   read_checkpoint, register_format)
from .importing import import_checkpoint


__all__ = ["CheckpointImportError", "Conversion", "ImportFormat", "TowerSpec", "import_checkpoint", "list_formats",
           "load_formats", "read_checkpoint", "register_format"]
