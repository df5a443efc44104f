"""transformers X-CLIP (``XCLIPModel``) as a CLIP backbone whose X-CLIP modules move into adaptvid's.

The vision tower of ``XCLIPModel`` is a CLIP ViT whose layers also hold X-CLIP's message modules
(``message_fc``, ``message_ln``, ``message_attn``). The wrapper takes those out of the library's
layers, so the tower is a plain CLIP image tower like any other backbone (its blocks run without
message tokens), and keeps them, with the model's MIT, prompt modules and logit scale, for the
X-CLIP weight importer (``adaptvid/checkpoints/xclip_transformers.py``), which copies them into
the ``x-clip`` method's modules when a model is built on this backbone. The text side (``text_model``, ``text_projection``, ``logit_scale``) is
CLIP's and is used as it is by ``HFClipTextEncoder``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from .base import BlockView
from .hf_clip import HFClipBackbone

# The official X-CLIP pipeline normalises with ImageNet statistics (mmaction's img_norm_cfg),
# as do the transformers checkpoints' preprocessor configs; used when a folder has none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MESSAGE_MODULES = ("message_fc", "message_ln", "message_attn")


class _Stats:
    image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD


class HFXClipBackbone(HFClipBackbone):
    library = "transformers"
    carries_method_weights = True   # its X-CLIP modules are imported into an x-clip model (adaptvid.checkpoints)

    def __init__(self, name: str, xclip_model: nn.Module, tokenizer=None, image_processor=None) -> None:
        if not hasattr(xclip_model, "mit") or not hasattr(xclip_model, "prompts_generator"):
            raise ValueError(f"backbone {name!r}: expected a transformers XCLIPModel, got {type(xclip_model).__name__}")
        if getattr(image_processor, "image_mean", None) is None:
            image_processor = _Stats()
        # The message modules leave the library's layers before the views are built: the tower is CLIP.
        messages = []
        for layer in xclip_model.vision_model.encoder.layers:
            messages.append({key: layer._modules.pop(key) for key in MESSAGE_MODULES if key in layer._modules})
        super().__init__(name, xclip_model, tokenizer, image_processor)
        self.xclip_config = xclip_model.config
        self._xclip = [xclip_model]    # a list: the library model is not a submodule (its towers are)
        self._messages = messages

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower.vision_model.pre_layernorm(tokens)

    def library_forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("transformers' X-CLIP vision tower has no image-only forward (its layers expect "
                                  "message tokens); compare whole models with XCLIPModel(...).logits_per_video")

    def _make_views(self) -> list[BlockView]:
        views = []
        for view in super()._make_views():
            layer = view.block

            def forward(x, layer=layer):   # a plain CLIP block: the layer's own forward needs its message modules
                x = x + layer.self_attn(hidden_states=layer.layer_norm1(x), attention_mask=None)[0]
                return x + layer.mlp(layer.layer_norm2(x))

            views.append(dataclasses.replace(view, forward=forward))
        return views

    @property
    def xclip_model(self) -> nn.Module:
        """The library's XCLIPModel (its MIT and prompt modules are read by the X-CLIP weight importer)."""
        return self._xclip[0]

    def take_message_modules(self) -> Optional[list[dict]]:
        """The per-layer message modules taken out of the library's layers, handed over once (they are
        40% of a B/16 tower's size); None once a model took them."""
        messages, self._messages = self._messages, None
        return messages
