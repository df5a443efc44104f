"""Image towers from open_clip, transformers and timm behind one protocol."""
from .base import HOOK_POINTS, Backbone, BlockView, FrameContext, Preprocess, Slot, attention, merge_heads, split_heads
from .loading import BackboneLoadError, create_backbone, list_backbones

__all__ = [
    "HOOK_POINTS", "Backbone", "BlockView", "FrameContext", "Preprocess", "Slot", "attention", "merge_heads", "split_heads",
    "BackboneLoadError", "create_backbone", "list_backbones",
]
