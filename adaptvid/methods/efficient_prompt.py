"""Efficient-Prompt (Ju, Han, Zheng, Zhang, Xie. Prompting Visual-Language Models for Efficient Video
Understanding. ECCV 2022; official code ju-chen/Efficient-Prompt, ``src/model.py``).

CLIP stays entirely frozen; two small modules are trained:

* **Text side** — the whole 77-slot input sequence of the text tower starts as a learned table
  ``nn.Embedding(77, W)`` N(0, 0.01). For each class, with ``L`` the end-of-text index of its plain
  tokenisation (``SOS name EOT``), slot 0 takes the SOS token embedding, slots ``P+1 .. P+L-1`` the
  class-name token embeddings and slot ``P+L+Q`` the EOT embedding (P = prefix = 16, Q = postfix = 16);
  every other slot reads the learned row at the same absolute position. Slots ``1..P`` are the shared
  prefix. **Quirk kept from the official code:** the Q "postfix" vectors are the rows at absolute
  positions ``P+L .. P+L+Q-1``, so classes whose names tokenise to different lengths read *different*
  rows, and a row can be a postfix for one class and be overwritten by a name token for another. Rows
  after EOT are never seen by the EOT output (causal mask). The text embedding is the EOT output.
* **Video side** — projected CLIP frame embeddings + a learned temporal embedding ``nn.Embedding(T, E)``
  N(0, 0.01), one pre-LN transformer block (8 heads, MLP 4x, QuickGELU, dropout 0, PyTorch default init),
  mean over T; no outer residual.
* **Logits** — cosine similarity / 0.07 (a fixed temperature, not CLIP's learned one).

Because the image tower is untouched, the model is ``cacheable()``: ``adaptvid adapt --cache-features``
runs CLIP once and trains from the stored frame features, as the official code does.
On CLIP ViT-B/16 with 8 frames: 39,424 + 4,096 + 3,152,384 = 3,195,904 trainable parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ._temporal import TemporalTransformer
from .registry import register_method

TEMPERATURE = 0.07


@dataclass
class EfficientPromptConfig:
    prefix: int = field(default=16, metadata={"help": "learned prompt vectors before the class name (official 16)"})
    postfix: int = field(default=16, metadata={"help": "learned prompt vectors after the class name (official 16)"})
    tfm_layers: int = field(default=1, metadata={"help": "temporal transformer blocks over frame embeddings (official 1)"})
    tfm_heads: int = field(default=8, metadata={"help": "heads of the temporal transformer (official 8)"})

    def __post_init__(self) -> None:
        if self.prefix < 0 or self.postfix < 0:
            raise ValueError(f"efficient-prompt needs prefix >= 0 and postfix >= 0, got {self.prefix}, {self.postfix}")
        if self.tfm_layers < 1 or self.tfm_heads < 1:
            raise ValueError(f"efficient-prompt needs tfm_layers >= 1 and tfm_heads >= 1, "
                             f"got {self.tfm_layers}, {self.tfm_heads}")


class EfficientPromptText(nn.Module):
    """The official prompt sequence: a learned 77-row table with SOS, name and EOT written into it.

    Called as ``prompt(text_encoder, class_names) -> (C, E)`` by the text classifier.
    """

    def __init__(self, width: int, context_length: int, prefix: int = 16, postfix: int = 16) -> None:
        super().__init__()
        self.prefix, self.postfix = prefix, postfix
        self.embedding = nn.Embedding(context_length, width)
        nn.init.normal_(self.embedding.weight, std=0.01)
        self._tokens: dict = {}   # class names -> plain token ids (tokenising is not free for 400 classes)

    def _plain_tokens(self, text, class_names) -> tuple[torch.Tensor, torch.Tensor]:
        key = (id(text), tuple(class_names))
        if key not in self._tokens:
            ids = text.tokenize(list(class_names)).ids
            self._tokens = {key: (ids, text.eot_index(ids).long())}
        return self._tokens[key]

    def layout(self, text, class_names) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(source, from_words, eot)``: slot p of class c reads word embedding ``source[c, p]`` of the plain
        tokenisation where ``from_words[c, p]``, else learned row p; ``eot[c]`` is the EOT slot."""
        ids, length = self._plain_tokens(text, class_names)
        n, context = ids.shape[0], self.embedding.num_embeddings
        if ids.shape[1] != context:
            raise ValueError(f"efficient-prompt: the prompt table has {context} slots but the text tower's "
                             f"context is {ids.shape[1]}")
        eot = self.prefix + length + self.postfix
        if int(eot.max()) >= context:
            worst = class_names[int(eot.argmax())]
            raise ValueError(f"efficient-prompt: class {worst!r} with {self.prefix} prefix and {self.postfix} postfix "
                             f"vectors needs {int(eot.max()) + 1} slots but the text tower has {context}; "
                             "shorten the class name or lower --prefix/--postfix")
        slots = torch.arange(context)[None].expand(n, -1)
        source = torch.zeros(n, context, dtype=torch.long)
        name = (slots > self.prefix) & (slots < self.prefix + length[:, None])     # slots P+1 .. P+L-1
        source = torch.where(name, slots - self.prefix, source)                     # <- word 1 .. L-1
        at_eot = slots == eot[:, None]
        source = torch.where(at_eot, length[:, None].expand(-1, context), source)  # <- the EOT word
        from_words = name | at_eot | (slots == 0)                                   # slot 0 <- SOS (word 0)
        return source, from_words, eot

    def token_layout(self, text, class_names) -> torch.Tensor:
        """(C, context) token ids at the slots filled from the tokenisation, -1 at the learned slots."""
        ids, _ = self._plain_tokens(text, class_names)
        source, from_words, _ = self.layout(text, class_names)
        return torch.where(from_words, ids.gather(1, source), torch.full_like(ids, -1))

    def forward(self, text, class_names) -> torch.Tensor:
        ids, _ = self._plain_tokens(text, class_names)
        source, from_words, eot = self.layout(text, class_names)
        device = self.embedding.weight.device
        ids, source, from_words = ids.to(device), source.to(device), from_words.to(device)
        with torch.no_grad():   # the token table is frozen CLIP
            words = text.word_embeddings(ids)
        words = words.gather(1, source[..., None].expand(-1, -1, words.shape[-1]))
        learned = self.embedding.weight[None].expand(len(class_names), -1, -1)
        sequence = torch.where(from_words[..., None], words.to(learned.dtype), learned)
        return text.encode_embeddings(sequence, eot.to(device))


@register_method(
    "efficient-prompt", EfficientPromptConfig, family="prompt tuning", aliases=("prompt-clip",),
    claims=("readout",), needs_text=True,
    paper="Ju, Han, Zheng, Zhang, Xie. Prompting Visual-Language Models for Efficient Video Understanding. ECCV 2022",
    help="CLIP frozen (cacheable); 16+16 learned text prompt vectors around the class name; 1-layer temporal "
         "transformer over frame embeddings; cosine / 0.07",
)
def apply_efficient_prompt(model, config: EfficientPromptConfig) -> None:
    from ._text_heads import check_no_text_classifier

    check_no_text_classifier(model, "efficient-prompt")
    text = model.use_text()
    prompt = EfficientPromptText(text.width, text.context_length, config.prefix, config.postfix)
    # Frame embeddings in CLIP's joint space, whatever readout an adapter chosen with it prefers.
    model.set_readout("embed-mean", project=True)
    model.set_text_classifier(prompt=prompt, fixed_logit_scale=1.0 / TEMPERATURE)
    model.set_aggregator(TemporalTransformer(model.embed_dim, config.tfm_layers, config.tfm_heads, model.num_frames,
                                             position_std=0.01))
