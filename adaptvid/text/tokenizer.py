"""Tokenizers behind one call: ``tokenizer(texts) -> Tokens(ids, mask)``, both ``(N, context_length)``.

``mask`` is 1 up to and including each text's end-of-text token and 0 on the
padding after it, whatever the library pads with.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class Tokens(NamedTuple):
    ids: torch.Tensor    # (N, L) long
    mask: torch.Tensor   # (N, L) long, 1 on real tokens


class ClipBpeTokenizer:
    """OpenAI CLIP's byte-pair tokenizer as open_clip ships it (its vocabulary file is in the wheel: works offline)."""

    def __init__(self, tokenizer=None, context_length: int = 77) -> None:
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=context_length)
        self.tokenizer = tokenizer
        self.context_length = getattr(tokenizer, "context_length", context_length)
        self.sot_token_id = tokenizer.sot_token_id
        self.eot_token_id = tokenizer.eot_token_id

    def __call__(self, texts: Sequence[str]) -> Tokens:
        ids = self.tokenizer(list(texts)).long()
        eot = (ids == self.eot_token_id).int().argmax(dim=-1)
        mask = (torch.arange(ids.shape[1]) <= eot[:, None]).long()
        return Tokens(ids, mask)

    def encode_words(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens (for prompt learners that place class names)."""
        return self.tokenizer.encode(text)


class HFTokenizer:
    """A transformers tokenizer padded to the text tower's context length."""

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.sot_token_id = tokenizer.bos_token_id
        self.eot_token_id = tokenizer.eos_token_id

    def __call__(self, texts: Sequence[str]) -> Tokens:
        out = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return Tokens(out["input_ids"].long(), out["attention_mask"].long())

    def encode_words(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
