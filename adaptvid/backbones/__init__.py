"""Image towers from open_clip, transformers and timm behind one protocol."""
from .base import HOOK_POINTS, Backbone, BlockView, FrameContext, Preprocess, Slot
from .loading import BackboneLoadError, create_backbone, list_backbones

__all__ = [
    "HOOK_POINTS", "Backbone", "BlockView", "FrameContext", "Preprocess", "Slot",
    "BackboneLoadError", "create_backbone", "list_backbones",
]
