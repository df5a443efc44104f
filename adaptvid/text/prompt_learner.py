"""Learnable text context (CoOp family): the class prompt's words are replaced by trained vectors.

Zhou, Yang, Loy, Liu. Learning to Prompt for Vision-Language Models (CoOp). IJCV 2022.
Deep (per-layer) text prompts as in Khattak et al., MaPLe: Multi-modal Prompt Learning, CVPR 2023
(its independent-prompts baseline IVLP). Used by ``coop`` and ``vita-clip`` (8 class-specific tokens).

Each class prompt is tokenised once as a sentence with ``n_ctx`` placeholder words, e.g.
``"X X X X square growing."``; at every call the placeholders' word embeddings are replaced by the
learned context and the sequence runs through the frozen text tower
(``TextEncoder.encode_embeddings``). ``position`` says where the context goes:

* ``"front"``:  ``X X X X name.``   (CoOp's ``class_token_position='end'``)
* ``"end"``:    ``name X X X X.``   (CoOp's ``'front'``)
* ``"middle"``: ``X X name X X.``   (CoOp's ``'middle'``; the first ``n_ctx // 2`` before the name)

With ``depth > 1`` the context's hidden states are replaced again, before text blocks 1 .. depth-1,
by a fresh learned set per block (shared by all classes): the deep prompts of MaPLe/IVLP. Block 0 sees
the shallow context, so deep prompts change the outputs only from block 1 on.

Called as a ``TextClassifier`` prompt: ``learner(text_encoder, class_names) -> (C, E)``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

POSITIONS = ("front", "end", "middle")
PLACEHOLDER = "X"
ENCODE_CHUNK = 256   # class prompts per text-tower call


def _tokenizer(text):
    """The encoder's tokenizer, or the encoder's own clear error when it has none offline."""
    if text.tokenizer is None:
        text.tokenize(["probe"])   # raises the ValueError that names the fix
    return text.tokenizer


def _placeholder_id(tokenizer) -> int:
    ids = tokenizer.encode_words(PLACEHOLDER)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits the placeholder {PLACEHOLDER!r} into {len(ids)} tokens; "
                         "prompt learners need a one-token placeholder")
    return ids[0]


class PromptTokens(nn.Module):
    """Token ids of the placeholder sentences for a list of class names, and where the context goes.

    Buffers (not saved: they follow from the class names): ``ids`` (C, L), ``mask`` (C, L),
    ``eot`` (C,), ``slots`` (C, n_ctx) — the positions of the context vectors in each sentence.
    """

    def __init__(self, text, class_names: Sequence[str], n_ctx: int, position: str) -> None:
        super().__init__()
        tokenizer = _tokenizer(text)
        x_id = _placeholder_id(tokenizer)
        sentences, slots = [], []
        first = n_ctx // 2 if position == "middle" else n_ctx
        for name in class_names:
            name = name.replace("_", " ")
            name_len = len(tokenizer.encode_words(name))
            if position == "front":
                sentence, start = [PLACEHOLDER] * n_ctx + [name], [range(1, 1 + n_ctx)]
            elif position == "end":
                sentence, start = [name] + [PLACEHOLDER] * n_ctx, [range(1 + name_len, 1 + name_len + n_ctx)]
            else:
                sentence = [PLACEHOLDER] * first + [name] + [PLACEHOLDER] * (n_ctx - first)
                start = [range(1, 1 + first), range(1 + first + name_len, 1 + n_ctx + name_len)]
            sentences.append(" ".join(sentence) + ".")
            slots.append([i for r in start for i in r])
        ids, mask = text.tokenize(sentences)
        eot = text.eot_index(ids)
        slots_t = torch.tensor(slots, dtype=torch.long).reshape(len(class_names), n_ctx)
        expected = torch.tensor([2 + n_ctx + len(tokenizer.encode_words(n.replace("_", " "))) for n in class_names])
        for c, name in enumerate(class_names):
            if int(eot[c]) != int(expected[c]):
                raise ValueError(f"class prompt for {name!r} with {n_ctx} context tokens does not fit the text "
                                 f"tower's {ids.shape[1]} tokens; use fewer context tokens or a shorter name")
            if n_ctx and not bool((ids[c, slots_t[c]] == x_id).all()):
                raise ValueError(f"could not place the context around the class name {name!r} "
                                 "(its tokenisation differs inside a sentence)")
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.register_buffer("slots", slots_t, persistent=False)


class TextPromptLearner(nn.Module):
    """``n_ctx`` learned context vectors for the class prompts (see the module docstring).

    ``class_specific``: one context per class (CSC), ``(C, n_ctx, W)``; else one shared ``(n_ctx, W)``.
    ``init``: a phrase (e.g. ``"a video of a"``) whose word embeddings start the context — its token count
    then sets ``n_ctx``; ``None``: N(0, 0.02). ``depth``: text blocks that get their own context (1 = shallow).
    """

    def __init__(self, text, class_names: Sequence[str], n_ctx: int = 16, position: str = "front",
                 class_specific: bool = False, init: Optional[str] = None, depth: int = 1) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"context position must be one of {POSITIONS}, got {position!r}")
        if not class_names:
            raise ValueError("a prompt learner needs the class names (class_names=[...] or --classes FILE)")
        if not 1 <= depth <= text.depth:
            raise ValueError(f"text prompt depth must be between 1 and the text tower's {text.depth} blocks, got {depth}")
        width = text.width
        if init:
            tokenizer = _tokenizer(text)
            init_ids = torch.tensor(tokenizer.encode_words(init.replace("_", " ")), dtype=torch.long)
            n_ctx = len(init_ids)
            if n_ctx == 0:
                raise ValueError(f"the context initialisation {init!r} has no tokens")
            device = text.logit_scale.device
            with torch.no_grad():
                vectors = text.word_embeddings(init_ids.to(device)).detach().float().cpu()
            if class_specific:
                vectors = vectors.expand(len(class_names), -1, -1)
            ctx = vectors.clone()
        else:
            if n_ctx < 1:
                raise ValueError(f"ctx_tokens must be >= 1, got {n_ctx}")
            shape = (len(class_names), n_ctx, width) if class_specific else (n_ctx, width)
            ctx = torch.empty(shape)
            nn.init.normal_(ctx, std=0.02)
        self.n_ctx, self.position, self.class_specific, self.depth = n_ctx, position, class_specific, depth
        self.class_names = list(class_names)
        self.ctx = nn.Parameter(ctx)
        self.deep_ctx = None
        if depth > 1:   # one shared set per deeper block, N(0, 0.02) as MaPLe's compound prompts
            self.deep_ctx = nn.Parameter(torch.empty(depth - 1, n_ctx, width))
            nn.init.normal_(self.deep_ctx, std=0.02)
        self.tokens = PromptTokens(text, self.class_names, n_ctx, position)
        self._other: dict[tuple[str, ...], PromptTokens] = {}   # names other than the training classes

    @property
    def handles_new_classes(self) -> bool:
        """A shared context can score other class names (TextClassifier.set_class_names); CSC cannot."""
        return not self.class_specific

    def extra_repr(self) -> str:
        return (f"n_ctx={self.n_ctx}, position={self.position!r}, class_specific={self.class_specific}, "
                f"depth={self.depth}, classes={len(self.class_names)}")

    def _tokens_for(self, text, class_names: Sequence[str]) -> PromptTokens:
        if list(class_names) == self.class_names:
            return self.tokens
        if self.class_specific:
            raise ValueError("class-specific text contexts exist only for the classes they were trained on; "
                             "use a shared context (ctx_class_specific=False) to score other class names")
        key = tuple(class_names)
        if key not in self._other:   # shared context on new names (base-to-novel): tokenised once, kept
            self._other[key] = PromptTokens(text, key, self.n_ctx, self.position).to(self.ctx.device)
        return self._other[key]

    def embeddings(self, text, class_names: Sequence[str]) -> tuple[torch.Tensor, PromptTokens]:
        """The input sequences ``(C, L, W)`` with the context in place, and their tokens."""
        tokens = self._tokens_for(text, class_names)
        x = text.word_embeddings(tokens.ids)
        ctx = self.ctx.to(x.dtype)
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(x.shape[0], -1, -1)
        index = tokens.slots.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return x.scatter(1, index, ctx), tokens

    def forward(self, text, class_names: Sequence[str], layer_hook=None) -> torch.Tensor:
        """(C, E) class embeddings (unnormalised). ``layer_hook(i, x) -> x`` runs after the deep prompts."""
        x, tokens = self.embeddings(text, class_names)
        parts = []
        for start in range(0, x.shape[0], ENCODE_CHUNK):
            stop = start + ENCODE_CHUNK
            slots = tokens.slots[start:stop]
            hook = self._hook(slots, layer_hook)
            parts.append(text.encode_embeddings(x[start:stop], tokens.eot[start:stop], tokens.mask[start:stop],
                                                layer_hook=hook))
        return torch.cat(parts)

    def _hook(self, slots: torch.Tensor, extra=None):
        if self.deep_ctx is None and extra is None:
            return None
        deep = self.deep_ctx

        def hook(i: int, x: torch.Tensor) -> torch.Tensor:
            if deep is not None and 1 <= i < self.depth:
                index = slots.unsqueeze(-1).expand(-1, -1, x.shape[-1])
                x = x.scatter(1, index, deep[i - 1].to(x.dtype).expand(x.shape[0], -1, -1))
            return extra(i, x) if extra is not None else x

        return hook

