"""The CLIP text tower behind one small interface, over open_clip and transformers.

Like the image backbone, a text encoder holds the library's own modules (no
copies of weights) and exposes the steps prompt methods need:

* ``tokenize(texts)`` -> :class:`Tokens` (ids and padding mask);
* ``word_embeddings(ids)`` -> ``(N, L, W)`` token embeddings before positions;
* ``encode_embeddings(x, eot_index, mask, layer_hook)`` -> ``(N, embed_dim)``:
  positions, the causal transformer (``layer_hook(i, x) -> x`` runs before
  block ``i``: deep text prompts), final norm, the end-of-text token, projection;
* ``forward(ids, mask)`` = the library's own text embedding (unnormalised);
* ``logit_scale``: CLIP's learned log temperature.

It starts frozen; methods unfreeze what their paper trains.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .tokenizer import ClipBpeTokenizer, HFTokenizer, Tokens

LayerHook = Callable[[int, torch.Tensor], torch.Tensor]
CLIP_BPE_VOCAB_SIZE = 49408   # OpenAI CLIP's byte-pair vocabulary (open_clip ships it)


class TextEncoder(nn.Module):
    library: str = ""
    width: int
    embed_dim: int
    context_length: int

    def __init__(self, name: str, tokenizer) -> None:
        super().__init__()
        self.name = name
        self.tokenizer = tokenizer

    # -- implemented per library ----------------------------------------------
    def word_embeddings(self, ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_embeddings(self, x: torch.Tensor, eot_index: torch.Tensor, mask: Optional[torch.Tensor] = None,
                          layer_hook: Optional[LayerHook] = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Position of each sequence's end-of-text token, whose output is the text embedding."""
        raise NotImplementedError

    def library_encode(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:  # pragma: no cover
        """The library's own text embedding, for equivalence tests."""
        raise NotImplementedError

    @property
    def blocks(self) -> Sequence[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.blocks)

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        if self.tokenizer is None:
            raise ValueError(
                f"backbone {self.name!r} has no tokenizer available offline; pass pre-tokenised text "
                "(input_ids=..., attention_mask=...) or load the backbone from a folder that holds its tokenizer files"
            )
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(texts)

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        ids = ids.to(self.logit_scale.device)
        mask = None if mask is None else mask.to(ids.device)
        return self.encode_embeddings(self.word_embeddings(ids), self.eot_index(ids), mask)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts)
        return self(ids, mask)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x[torch.arange(x.shape[0], device=x.device), index.to(x.device)]


class OpenClipTextEncoder(TextEncoder):
    library = "open_clip"

    def __init__(self, name: str, clip_model: nn.Module, tokenizer=None) -> None:
        super().__init__(name, ClipBpeTokenizer(tokenizer) if tokenizer is not None else None)
        if not hasattr(clip_model, "token_embedding"):
            raise ValueError(f"backbone {name!r}: only open_clip CLIP models with the standard text tower are supported "
                             f"(got {type(clip_model).__name__})")
        if clip_model.text_pool_type not in ("argmax", "eos"):
            raise ValueError(f"backbone {name!r}: text pooling {clip_model.text_pool_type!r} is not supported")
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.logit_scale = clip_model.logit_scale
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        self.pool_type = clip_model.text_pool_type
        self.eos_id = getattr(clip_model, "text_eos_id", None)
        self.width = self.transformer.width
        self.context_length = clip_model.context_length
        proj = self.text_projection
        self.embed_dim = (proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]) if proj is not None else self.width
        if not getattr(self.transformer, "batch_first", True):
            raise ValueError(f"backbone {name!r}: sequence-first open_clip text towers are not supported")
        self._library_model = [clip_model]   # for library_encode only (a list: not a submodule)

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.transformer.resblocks

    def word_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        return ids.argmax(dim=-1)

    def encode_embeddings(self, x, eot_index, mask=None, layer_hook=None):
        length = x.shape[1]
        x = x + self.positional_embedding[:length].to(x.dtype)
        attn_mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        for i, block in enumerate(self.transformer.resblocks):
            if layer_hook is not None:
                x = layer_hook(i, x)
            x = block(x, attn_mask=attn_mask)
        x = _take(self.ln_final(x), eot_index)
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def library_encode(self, ids, mask=None):
        return self._library_model[0].encode_text(ids)


class HFClipTextEncoder(TextEncoder):
    library = "transformers"

    def __init__(self, name: str, clip_model: nn.Module, tokenizer=None) -> None:
        text_model = clip_model.text_model
        config = text_model.config
        self.context_length = config.max_position_embeddings
        if tokenizer is not None:
            wrapped = HFTokenizer(tokenizer, self.context_length)
        elif config.vocab_size == CLIP_BPE_VOCAB_SIZE:  # OpenAI's BPE vocabulary: open_clip's copy gives the same ids
            wrapped = ClipBpeTokenizer(context_length=self.context_length)
        else:
            wrapped = None
        super().__init__(name, wrapped)
        self.text_model = text_model
        self.text_projection = getattr(clip_model, "text_projection", None)
        self.logit_scale = clip_model.logit_scale
        self.width = config.hidden_size
        self.embed_dim = self.text_projection.out_features if self.text_projection is not None else self.width
        self._library_model = [clip_model]

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.text_model.encoder.layers

    def word_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding(ids)

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        eos = self.text_model.eos_token_id
        if eos == 2:  # configs written before transformers fixed eos_token_id: the library takes the largest id
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)

    def encode_embeddings(self, x, eot_index, mask=None, layer_hook=None):
        n, length = x.shape[:2]
        positions = self.text_model.embeddings.position_embedding.weight[:length]
        x = x + positions.to(x.dtype)
        allowed = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None, None]
        if mask is not None:
            allowed = allowed & mask.to(x.device, torch.bool)[:, None, None, :]
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, torch.finfo(x.dtype).min)
        for i, layer in enumerate(self.text_model.encoder.layers):
            if layer_hook is not None:
                x = layer_hook(i, x)
            out = layer(x, attention_mask=bias)
            x = out[0] if isinstance(out, tuple) else out
        x = _take(self.text_model.final_layer_norm(x), eot_index)
        return self.text_projection(x) if self.text_projection is not None else x

    def library_encode(self, ids, mask=None):
        return self._library_model[0].get_text_features(input_ids=ids, attention_mask=mask).pooler_output


def make_text_encoder(backbone) -> TextEncoder:
    """The text encoder of a CLIP backbone (frozen), or a clear error for towers without one."""
    handle = getattr(backbone, "text", None)
    if handle is None:
        raise ValueError(
            f"backbone {backbone.name!r} has no text tower: text-side methods and zero-shot need a CLIP "
            "backbone (clip, clip-b32, clip-l14, open_clip:..., hf:..., tiny-clip, tiny-hf-clip)"
        )
    cls = OpenClipTextEncoder if backbone.library == "open_clip" else HFClipTextEncoder
    encoder = cls(backbone.name, handle.model, handle.tokenizer)
    encoder.requires_grad_(False)
    return encoder
