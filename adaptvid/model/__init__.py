"""The video model: a backbone with methods injected, its readout and classifier (``VideoModel``),
building it (``build_model``), folding mergeable methods (``merge``), re-pointing it at other classes
(``zero_shot_model``, ``set_classes``) and measuring it (``profile``)."""
from .merge import merge
from .video_model import (POOLS, VideoModel, assemble_model, build_model, count_parameters,
                          register_weight_importer)
from .zero_shot import set_classes, zero_shot_model

__all__ = ["POOLS", "VideoModel", "assemble_model", "build_model", "count_parameters", "merge",
           "register_weight_importer", "set_classes", "zero_shot_model"]
