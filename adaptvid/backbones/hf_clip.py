"""transformers CLIP vision towers behind the backbone protocol."""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, BlockView, Preprocess, identity, merge_heads, split_heads
from .openclip import TextTower

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HFClipTower(nn.Module):
    """The vision half of a transformers CLIPModel: vision_model + visual_projection."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module | None) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = projection


class HFClipBackbone(Backbone):
    library = "transformers"

    def __init__(self, name: str, clip_model: nn.Module, tokenizer=None, image_processor=None) -> None:
        tower = HFClipTower(clip_model.vision_model, getattr(clip_model, "visual_projection", None))
        super().__init__(name, tower)
        cfg = clip_model.vision_model.config
        self.width = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.patch_size = cfg.patch_size
        self.image_size = cfg.image_size
        proj = tower.visual_projection
        self.embed_dim = proj.out_features if proj is not None else self.width
        mean = getattr(image_processor, "image_mean", None) or OPENAI_CLIP_MEAN
        std = getattr(image_processor, "image_std", None) or OPENAI_CLIP_STD
        self.preprocess = Preprocess(image_size=self.image_size, mean=tuple(mean), std=tuple(std))
        if hasattr(clip_model, "text_model"):
            self.text = TextTower(clip_model, tokenizer)

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower.vision_model.embeddings(images)

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower.vision_model.pre_layrnorm(tokens)

    def head(self, cls: torch.Tensor, project: bool = True) -> torch.Tensor:
        cls = self.tower.vision_model.post_layernorm(cls)
        if project and self.tower.visual_projection is not None:
            cls = self.tower.visual_projection(cls)
        return cls

    def final_norms(self) -> list[nn.Module]:
        return [self.tower.vision_model.post_layernorm]

    def library_forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.tower.vision_model(pixel_values=images).pooler_output
        if self.tower.visual_projection is not None:
            pooled = self.tower.visual_projection(pooled)
        return pooled

    def _make_views(self) -> list[BlockView]:
        views = []
        for layer in self.tower.vision_model.encoder.layers:
            def attn(x, layer=layer):
                return layer.self_attn(hidden_states=x, attention_mask=None)[0]

            def forward(x, layer=layer):
                out = layer(x, attention_mask=None)
                return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple

            def qkv(x, a=layer.self_attn):
                h = a.num_heads
                return split_heads(a.q_proj(x), h), split_heads(a.k_proj(x), h), split_heads(a.v_proj(x), h)

            def attn_out(o, a=layer.self_attn):
                return a.out_proj(merge_heads(o))

            views.append(BlockView(
                block=layer,
                norm1=layer.layer_norm1,
                attn=attn,
                attn_module=layer.self_attn,
                residual1=identity,
                norm2=layer.layer_norm2,
                mlp=layer.mlp,
                residual2=identity,
                forward=forward,
                qkv=qkv,
                attn_out=attn_out,
                num_heads=layer.self_attn.num_heads,
            ))
        return views
