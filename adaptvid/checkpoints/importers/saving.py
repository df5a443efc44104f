"""Writing an imported model as an adaptvid checkpoint folder that reloads offline with ``load_model``."""
from __future__ import annotations

from pathlib import Path

from ...backbones.open_clip_folder import write_folder
from .base import Conversion

TOWER_FOLDER = "tower"


def save_imported(model, conversion: Conversion, output, overwrite: bool = False) -> Path:
    """``model.save_pretrained(output)``; a tower that came from the checkpoint (full form) is written to
    ``output/tower/`` first and the checkpoint records it as backbone ``open_clip-dir:<that folder>``."""
    output = Path(output).expanduser().resolve()
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output}: exists and is not empty; pass --overwrite (Python overwrite=True) "
                              "to replace it, or choose another --output")
    if conversion.tower is not None:
        tower = write_folder(model.backbone.text.model, model.backbone.imported_config, output / TOWER_FOLDER)
        model.backbone.name = f"open_clip-dir:{tower}"
        model.weights = None
    model.save_pretrained(output, class_names=getattr(model, "class_names", None),
                          extra={"imported_from": getattr(model, "imported_from", None)})
    return output
