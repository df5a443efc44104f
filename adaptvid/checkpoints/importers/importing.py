"""``import_checkpoint``: a released checkpoint, converted by its format, built and loaded strictly."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Optional

import torch

from .base import CheckpointImportError, Conversion, _listed, get_format, read_checkpoint
from .openai_clip import tower_backbone
from .saving import save_imported

logger = logging.getLogger(__name__)


def _check_and_copy(model, conversion: Conversion, fmt: str, where: str) -> None:
    expected = model.state_dict()
    unknown = [k for k in conversion.tensors if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in conversion.tensors.items()
             if k in expected and expected[k].shape != v.shape]
    from_tower = ("backbone.tower.", "text.") if conversion.tower is not None else ()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = [k for k in trained if k not in conversion.tensors and not k.startswith(from_tower)]
    problems = []
    if unknown:
        problems.append(f"tensors adaptvid's {conversion.method} model does not have: {_listed(unknown)}")
    if wrong:
        problems.append(f"wrong shapes: {_listed(wrong)}")
    if missing:
        problems.append(f"model tensors the checkpoint does not provide: {_listed(missing)}")
    if problems:
        raise CheckpointImportError(
            f"{where}: does not fit a {fmt} model: " + "; ".join(problems)
            + ". Check --format, and options the tensors cannot show (heads, frames, method options)")
    with torch.no_grad():
        for key, value in conversion.tensors.items():
            expected[key].copy_(value)


class _ReadOptions(dict):
    """The options given to a format, remembering which ones its converter looked at: an option the
    format never reads (a typo, or one meant for another format) is refused instead of silently ignored."""

    def __init__(self, options: dict):
        super().__init__(options)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def import_checkpoint(name: str, source, *, backbone=None, weights: Optional[str] = None,
                      num_frames: Optional[int] = None, class_names=None, output=None, overwrite: bool = False,
                      **options):
    """A released checkpoint of method ``name`` (``adaptvid import --list``) as an adaptvid model.

    Full-form checkpoints (the frozen tower included) need nothing else: the tower's shape is read
    from its tensors (``heads=`` overrides the head count, ``width // 64`` by default). Method-only
    checkpoints are combined with ``backbone`` (and ``weights``), the backbone they were trained on.
    With ``output``, the model is also written there as an adaptvid checkpoint folder
    (``adaptvid.load_model(output)`` reloads it). Returns the model in eval mode.
    """
    from ...model import build_model

    fmt = get_format(name)
    where = "the given state dict" if isinstance(source, Mapping) else str(source)
    state = read_checkpoint(source)
    if num_frames is not None:
        options["num_frames"] = num_frames
    given = _ReadOptions(options)
    conversion = fmt.convert(state, given)
    unexpected = set(state) - conversion.consumed
    if unexpected:
        raise CheckpointImportError(f"{where}: {len(unexpected)} key(s) a {name} checkpoint does not have: "
                                    f"{_listed(unexpected)}; is it a {name} checkpoint ({fmt.source})?")
    if conversion.tower is not None:
        if backbone is not None:
            logger.info("%s holds its own tower; backbone %r is not used", where, backbone)
        bb, weights = tower_backbone(conversion.tower, name), None
    elif backbone is None:
        raise CheckpointImportError(
            f"{where}: holds the {name} modules only, not the frozen tower: pass the backbone it was trained on "
            "(--backbone NAME [--weights FILE], Python backbone=..., e.g. backbone='clip')")
    else:
        bb = backbone
    classes = class_names if class_names is not None else conversion.class_names
    model = build_model(bb, conversion.method, None if classes is not None else conversion.num_classes,
                        class_names=classes, weights=weights, num_frames=num_frames or conversion.num_frames,
                        **conversion.options)
    _check_and_copy(model, conversion, name, where)
    unused = sorted(set(options) - given.read - {"num_frames"})   # after the keys: a wrong file is said first
    if unused:
        raise CheckpointImportError(f"{where}: option(s) {unused} mean nothing to a {name} checkpoint of this form "
                                    f"(the {name} format read: {sorted(given.read) or 'no option'}); check the names")
    model.eval()
    if conversion.merge:
        from ...model import merge

        merge(model)
    model.imported_from = {"format": name, "source": where}
    if output is not None:
        save_imported(model, conversion, output, overwrite=overwrite)
    return model
