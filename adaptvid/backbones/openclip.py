"""open_clip CLIP image towers behind the backbone protocol."""
from __future__ import annotations

import torch
from torch import nn

import torch.nn.functional as F

from .base import Backbone, BlockView, Preprocess, merge_heads, split_heads


class TextTower:
    """The CLIP text side, kept at hand (not a submodule) for text-side methods."""

    def __init__(self, model: nn.Module, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer


class OpenClipBackbone(Backbone):
    library = "open_clip"

    def __init__(self, name: str, clip_model: nn.Module, tokenizer=None) -> None:
        visual = clip_model.visual
        super().__init__(name, visual)
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError(
                f"backbone {name!r}: only CLS-token pooling towers are supported "
                f"(this one pools with {getattr(visual, 'pool_type', '?')!r} / attention pooling)"
            )
        first = visual.transformer.resblocks[0]
        self.width = visual.transformer.width
        self.num_heads = first.attn.num_heads
        self.patch_size = visual.conv1.kernel_size[0]
        self.image_size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        self.embed_dim = visual.proj.shape[1] if visual.proj is not None else self.width
        self._batch_first = getattr(visual.transformer, "batch_first", True)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.preprocess = Preprocess(
            image_size=self.image_size,
            mean=tuple(cfg.get("mean", visual.image_mean or (0.48145466, 0.4578275, 0.40821073))),
            std=tuple(cfg.get("std", visual.image_std or (0.26862954, 0.26130258, 0.27577711))),
            interpolation=cfg.get("interpolation", "bicubic"),
        )
        self.text = TextTower(clip_model, tokenizer)

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        v = self.tower
        x = v.conv1(images).flatten(2).transpose(1, 2)                 # (N, grid*grid, width)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.patch_dropout(x)

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower.ln_pre(tokens)

    def head(self, cls: torch.Tensor, project: bool = True) -> torch.Tensor:
        cls = self.tower.ln_post(cls)
        if project and self.tower.proj is not None:
            cls = cls @ self.tower.proj
        return cls

    def final_norms(self) -> list[nn.Module]:
        return [self.tower.ln_post]

    def library_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower(images)

    def _make_views(self) -> list[BlockView]:
        if not self._batch_first:
            raise ValueError(f"backbone {self.name!r}: sequence-first open_clip towers are not supported")
        return [self._view(block) for block in self.tower.transformer.resblocks]

    @staticmethod
    def _view(block: nn.Module) -> BlockView:
        qkv = attn_out = None
        # A method may wrap the attention (LoRA through peft): look through to the library's module.
        base = block.attn.get_base_layer() if hasattr(block.attn, "get_base_layer") else block.attn
        if isinstance(base, nn.MultiheadAttention):
            def attn(x, block=block):
                return block.attention(q_x=x)

            def qkv(x, m=block.attn, base=base):
                # A wrapper that changes the projections says how (adapted_weights); else the plain weights.
                weight = m.adapted_weights()[0] if hasattr(m, "adapted_weights") else base.in_proj_weight
                q, k, v = F.linear(x, weight, base.in_proj_bias).chunk(3, dim=-1)
                h = base.num_heads
                return split_heads(q, h), split_heads(k, h), split_heads(v, h)

            def attn_out(o, base=base):
                return base.out_proj(merge_heads(o))
        else:  # CustomResidualAttentionBlock: open_clip's own Attention + optional ln_attn
            def attn(x, block=block):  # (cosine attention / head scales: no qkv handles offered)
                return block.ln_attn(block.attn(x))
        return BlockView(
            block=block,
            norm1=block.ln_1,
            attn=attn,
            attn_module=block.attn,
            residual1=block.ls_1,
            norm2=block.ln_2,
            mlp=block.mlp,
            residual2=block.ls_2,
            forward=block,
            qkv=qkv,
            attn_out=attn_out,
            num_heads=base.num_heads,
        )
