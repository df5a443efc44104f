"""timm VisionTransformer towers behind the backbone protocol."""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, BlockView, Preprocess, identity, merge_heads


class TimmBackbone(Backbone):
    library = "timm"

    def __init__(self, name: str, model: nn.Module) -> None:
        super().__init__(name, model)
        if getattr(model, "cls_token", None) is None or model.global_pool != "token":
            raise ValueError(
                f"backbone {name!r}: adaptvid needs a timm ViT with a CLS token and global_pool='token' "
                f"(got global_pool={getattr(model, 'global_pool', None)!r}); "
                "create it with class_token=True, global_pool='token'"
            )
        if getattr(model, "attn_pool", None) is not None:
            raise ValueError(f"backbone {name!r}: attention-pooling timm ViTs are not supported")
        self.width = model.embed_dim
        self.embed_dim = model.embed_dim
        self.num_heads = model.blocks[0].attn.num_heads
        self.patch_size = model.patch_embed.patch_size[0]
        self.image_size = model.patch_embed.img_size[0]
        self.num_prefix_tokens = model.num_prefix_tokens
        cfg = model.pretrained_cfg or {}
        self.preprocess = Preprocess(
            image_size=self.image_size,
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            interpolation=cfg.get("interpolation", "bicubic"),
        )

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        m = self.tower
        return m.patch_drop(m._pos_embed(m.patch_embed(images)))

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower.norm_pre(tokens)

    def head(self, cls: torch.Tensor, project: bool = True) -> torch.Tensor:  # timm towers have no projection
        # timm applies `norm` to all tokens then `fc_norm` to the pooled one; both are per-token.
        return self.tower.fc_norm(self.tower.norm(cls))

    def final_norms(self) -> list[nn.Module]:
        # norm on every token, fc_norm on the pooled one (an Identity unless the model pools by average)
        return [m for m in (self.tower.norm, self.tower.fc_norm) if not isinstance(m, nn.Identity)]

    def library_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower.forward_head(self.tower.forward_features(images), pre_logits=True)

    def _make_views(self) -> list[BlockView]:
        views = []
        for block in self.tower.blocks:
            if not hasattr(block, "norm1") or not hasattr(block, "ls1"):
                raise ValueError(f"backbone {self.name!r}: unsupported timm block type {type(block).__name__}")
            views.append(BlockView(
                block=block,
                norm1=block.norm1,
                attn=block.attn,
                attn_module=block.attn,
                **self._qkv_handles(block.attn),
                residual1=nn.Sequential(block.ls1, block.drop_path1),
                norm2=block.norm2,
                mlp=block.mlp,
                residual2=nn.Sequential(block.ls2, block.drop_path2),
                forward=block,
            ))
        return views

    @staticmethod
    def _qkv_handles(attn: nn.Module) -> dict:
        if not hasattr(attn, "qkv") or getattr(attn, "gate", None) is not None:
            return {"num_heads": getattr(attn, "num_heads", 0)}  # unusual attention: no qkv handles offered

        def qkv(x, a=attn):
            n, length, _ = x.shape
            q, k, v = a.qkv(x).reshape(n, length, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            return a.q_norm(q), a.k_norm(k), v

        def attn_out(o, a=attn):
            return a.proj_drop(a.proj(getattr(a, "norm", identity)(merge_heads(o))))

        return {"qkv": qkv, "attn_out": attn_out, "num_heads": attn.num_heads}
