"""CLIP4Clip (Luo, Ji, Zhong, Chen, Lei, Duan, Li: "CLIP4Clip: An Empirical Study of CLIP for End to End
Video Clip Retrieval and Captioning", Neurocomputing 508, 2022; official code ArrowLuo/CLIP4Clip,
``modules/modeling.py`` (``CLIP4Clip._loose_similarity``, the initialisation in ``from_pretrained``) and
``modules/module_cross.py`` (``Transformer``, ``ResidualAttentionBlock``, ``CrossModel``)).

Text-video retrieval with both CLIP towers fine-tuned: each frame goes through the image tower (CLS ->
final norm -> projection), a *similarity header* turns the ``(B, T, E)`` frame embeddings into one
video embedding in CLIP's joint space, the caption is CLIP's text embedding (end-of-text token), and the
logits are ``exp(logit_scale) x cosine`` (a symmetric InfoNCE loss over the batch in the paper). The
"loose" headers (the paper's parameter-free, sequential types) are:

* ``meanP``: mean over time of the L2-normalised frame embeddings, normalised again; no parameters;
* ``seqLSTM``: a 1-layer LSTM (hidden = E) over the frame embeddings, the input added back (residual);
* ``seqTransf``: learned frame position embeddings (``nn.Embedding(77, W)``) added to the frames, a
  ``transf_layers``-block (4) pre-LN transformer of the text tower's width W and head count, without a
  causal mask, and the input added back.

The "tight" header ``tightTransf`` (the official ``_cross_similarity``) scores each (caption, video) pair
with a joint encoder, :class:`CrossHeader`: the sequence ``[t, f_1 .. f_T]`` of the raw (unnormalised)
text embedding and frame embeddings, plus position embeddings ``nn.Embedding(77, W)`` (position 0 is the
text; the official ``CrossEmbeddings`` has no token-type embedding and no LayerNorm: both are commented
out), dropout 0.1, ``transf_layers`` (``cross_num_hidden_layers``, 4) pre-LN blocks without a causal mask
whose keys leave out padded frames (the official additive ``-1e6`` mask; the text token is always a key),
then the official ``CrossPooler``: ``QuickGELU(dense(LN(h)[first token]))``, and ``similarity_dense``, a
``Linear(W, 1)``: the pair's score. The score matrix ``(texts, videos)`` is *not* multiplied by CLIP's
logit scale (the official code does not), and the loss is the symmetric cross-entropy over it
(``CrossEn`` on the matrix and its transpose, local batch). Initialisation as the official
``from_pretrained``: CLIP's text position table into the position embeddings and the first
``transf_layers`` text blocks into the cross blocks; the pooler and ``similarity_dense`` N(0, 0.02), biases 0.
The header is text-conditioned (``text_conditioned = True``, the interface X-Pool's head uses): the
retrieval task calls ``model.aggregator.score(frames (V, T, E), texts (N, E)) -> (N, V)``, in chunks of
``cross_text_chunk`` texts against all videos (``chunk x V`` sequences at once); called as an aggregator
it gives the ``meanP`` embedding (``encode_video`` needs one; the official code has no text-free
embedding for this header); ``model.text_logits`` and, with class names, ``model(video)`` use the cross
scores (a parameter-free video encoder hands the frame embeddings to :class:`CrossClassifier`).
``similarity_dense.bias`` adds the same number to every score, so it never receives a gradient (it is kept:
the official checkpoints hold it). New parameters on ViT-B/32 (W = E = 512, 8 heads): 77 x 512 positions +
4 x 3,152,384 blocks + 263,680 pooler + 513 ``similarity_dense`` = 12,913,153, as the official modules.

Every header then normalises each frame, averages over the valid frames and normalises the mean
(``visual / |visual|``, masked mean, ``/ |.|`` in the official code), so ``model.encode_video(video)`` is
already a unit vector. Each header is set with ``model.set_aggregator(header)``: ``header(frames,
frame_mask=None)`` maps ``(B, T, E)`` to ``(B, E)``; ``frame_mask`` ``(B, T)`` (True = a real frame) leaves
padded or unreadable frames out of the mean, out of the LSTM (which reads only the valid frames, in
order, as the official ``pack_padded_sequence``) and out of the attention's keys (the official additive
``-1e6`` key mask). ``VideoModel`` calls the aggregator without a mask (all frames valid); a retrieval
loop with padded clips calls ``model.aggregator(model.encode_frames(video), frame_mask)``.

**Initialisation of ``seqTransf``, as the official code.** Its ``from_pretrained`` copies, from CLIP's
state dict, ``positional_embedding`` (the *text* position table, all 77 rows) into
``frame_position_embeddings.weight`` and every ``transformer.resblocks.<i>.*`` with ``i < 4`` (the first
four *text* blocks: ``ln_1``, ``attn.in_proj_*``, ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``)
into ``transformerClip.resblocks.<i>.*``. Here the same tensors are copied from the model's text tower,
for open_clip (same names) and transformers (``q/k/v_proj`` concatenated into the fused input
projection; ``layer_norm1/2``, ``fc1/fc2``). Blocks beyond the text tower's depth keep the official
``init_weights`` (Linear and Embedding N(0, 0.02), biases 0, LayerNorm 1/0; the fused attention input
projection PyTorch's xavier). The header is **not** the identity at initialisation (and need not be): the
output is ``x + blocks(x + pos)`` with CLIP's text blocks, and ``x + LSTM(x)`` for ``seqLSTM`` with
PyTorch's default LSTM init (the official ``init_weights`` does not touch ``nn.LSTM``).

New parameters on CLIP ViT-B/32 (text width 512, 8 heads): ``seqTransf`` 4 x 3,152,384 (blocks) +
77 x 512 (frame positions) = 12,648,960, as the official module definitions; ``seqLSTM`` 2,101,248;
``meanP`` 0.

Trained: the image tower (``train_visual``) and the whole text tower (``train_text``: word and position
embeddings, blocks, final norm, projection), both at ``backbone_lr`` (the official CLIP group at
``lr x coef_lr``); the header at ``lr`` (the official new-module rate); CLIP's logit scale always (the
official code trains it with CLIP, even when ``--freeze_layer_num`` freezes layers). With class names
(classification on top of retrieval training) the model gets a text classifier over ``class_template``;
without them (retrieval) it has none, and ``model.text_logits(video, texts)`` scores free text.

Differences from the official code: the activation of the ``seqTransf`` blocks is the text tower's own
(QuickGELU for OpenAI weights, the official hard-coded choice; GELU on randomly built open_clip towers),
so the copied blocks compute what they computed in the text tower; the official ``seqLSTM`` also builds
(and initialises from the text positions) a frame position table that its forward never uses: it is left
out here (0.04M parameters that receive no gradient); the LSTM's input is compacted to the valid frames
for any mask, not only a prefix mask; a video whose frames are all masked gives the zero vector (the
official code divides 0 by 0); when the frame embedding width E differs from the text width W (never on
OpenAI's ViTs; adaptvid's tiny test towers), linear maps E -> W and W -> E (PyTorch default init) wrap the
transformer (``tightTransf``: E -> W only), which the official code does not support. The blocks of
``seqTransf`` and ``tightTransf`` use LayerNorm eps 1e-12, as the official ``module_cross`` blocks (its
BERT-style ``LayerNorm``), not the text tower's 1e-5. ``tightTransf`` freezes CLIP's logit scale (the
official code trains it, but its score does not use it: no gradient reaches it).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..text import TextClassifier, check_templates, encode_class_prompts
from ._temporal import QuickGELU
from ._text_heads import FrameEmbeddingsEncoder, check_no_text_classifier
from .registry import register_method

SIM_HEADERS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
OFFICIAL_INIT_STD = 0.02   # the official PreTrainedModel.init_weights (cross_config.initializer_range)
OFFICIAL_LN_EPS = 1e-12    # module_cross's blocks and pooler use until_module.LayerNorm (BERT-style, eps 1e-12)
CROSS_DROPOUT = 0.1        # cross-base/cross_config.json hidden_dropout_prob (CrossEmbeddings.dropout)


@dataclass
class CLIP4ClipConfig:
    sim_header: str = field(default="meanP", metadata={
        "help": "similarity header over the frame embeddings: meanP (parameter-free mean), seqLSTM (LSTM + "
                "residual), seqTransf (transformer initialised from CLIP's text blocks + residual) or tightTransf "
                "(a joint text-frames transformer scoring every caption-video pair; slower)"})
    transf_layers: int = field(default=4, metadata={
        "help": "blocks of the seqTransf / tightTransf header (CLIP4Clip's cross_num_hidden_layers: 4, copied "
                "from the first text blocks)"})
    cross_text_chunk: int = field(default=8, metadata={
        "help": "tightTransf: texts scored at once against all videos (bounds memory at chunk x videos sequences)"})
    train_visual: bool = field(default=True, metadata={"help": "fine-tune the CLIP image tower (CLIP4Clip trains both)"})
    train_text: bool = field(default=True, metadata={"help": "fine-tune the CLIP text tower"})
    class_template: str = field(default="{}", metadata={
        "help": "how a class name becomes its text when class names are given (retrieval has none)"})

    def __post_init__(self) -> None:
        if self.sim_header not in SIM_HEADERS:
            raise ValueError(f"clip4clip sim_header must be one of {', '.join(SIM_HEADERS)}, got {self.sim_header!r}")
        if self.transf_layers < 1:
            raise ValueError(f"clip4clip transf_layers must be >= 1, got {self.transf_layers}")
        if self.cross_text_chunk < 1:
            raise ValueError(f"clip4clip cross_text_chunk must be >= 1, got {self.cross_text_chunk}")
        check_templates(self.class_template)


# -- shared pieces -----------------------------------------------------------------

def check_frame_mask(frames: torch.Tensor, frame_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``None`` (all frames valid) or a boolean ``(B, T)`` mask on the frames' device."""
    if frames.ndim != 3:
        raise ValueError(f"expected frame embeddings (B, T, E), got shape {tuple(frames.shape)}")
    if frame_mask is None:
        return None
    if tuple(frame_mask.shape) != tuple(frames.shape[:2]):
        raise ValueError(f"frame_mask must be (B, T) = {tuple(frames.shape[:2])}, got {tuple(frame_mask.shape)}")
    return frame_mask.to(device=frames.device, dtype=torch.bool)


def normalised_mean(frames: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each frame L2-normalised, averaged over the valid frames, normalised again: ``(B, T, E) -> (B, E)``."""
    frames = F.normalize(frames, dim=-1)
    if frame_mask is None:
        return F.normalize(frames.mean(dim=1), dim=-1)
    weight = frame_mask.to(frames.dtype).unsqueeze(-1)
    mean = (frames * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
    return F.normalize(mean, dim=-1)


class SimilarityHeader(nn.Module):
    """``header(frames (B, T, E), frame_mask=None) -> (B, E)`` unit video embeddings."""

    text_conditioned = False   # one embedding per video, whatever the text (X-Pool's head is text-conditioned)
    name = ""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def sequence(self, frames: torch.Tensor, frame_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return frames

    def forward(self, frames: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        frame_mask = check_frame_mask(frames, frame_mask)
        if frames.shape[-1] != self.embed_dim:
            raise ValueError(f"{self.name} header expects (B, T, {self.embed_dim}) frame embeddings, "
                             f"got {tuple(frames.shape)}")
        return normalised_mean(self.sequence(frames, frame_mask), frame_mask)


class MeanPHeader(SimilarityHeader):
    """``meanP``: the parameter-free mean of the normalised frame embeddings."""

    name = "meanP"


class LSTMHeader(SimilarityHeader):
    """``seqLSTM``: ``x + LSTM(x)`` over the valid frames (hidden width = E), then the normalised mean."""

    name = "seqLSTM"

    def __init__(self, embed_dim: int) -> None:
        super().__init__(embed_dim)
        self.lstm = nn.LSTM(input_size=embed_dim, hidden_size=embed_dim, num_layers=1, batch_first=True,
                            bidirectional=False)

    def sequence(self, frames, frame_mask):
        if frame_mask is None or bool(frame_mask.all()):
            return frames + self.lstm(frames)[0]
        t = frames.shape[1]
        # Valid frames first, in their order (a stable sort), so the LSTM reads only them; outputs go back
        # to the frames' own positions, zeros at the masked ones (which the mean leaves out).
        order = torch.sort((~frame_mask).to(torch.uint8), dim=1, stable=True).indices
        index = order.unsqueeze(-1).expand_as(frames)
        lengths = frame_mask.sum(dim=1).clamp_min(1).cpu()
        packed = pack_padded_sequence(frames.gather(1, index), lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=t)
        out = out * frame_mask.gather(1, order).unsqueeze(-1).to(out.dtype)   # an all-masked video: zeros
        return frames + torch.zeros_like(out).scatter(1, index, out)


class FrameBlock(nn.Module):
    """CLIP's residual attention block over the frames of a clip (batch first, no causal mask):
    ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, ``mlp = c_proj(act(c_fc(x)))``; parameter names as
    open_clip's and the official ``ResidualAttentionBlock``."""

    def __init__(self, width: int, heads: int, activation: nn.Module, ln_eps: float = OFFICIAL_LN_EPS) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", activation),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def _official_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=OFFICIAL_INIT_STD)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# -- reading the text tower (open_clip and transformers) ------------------------------

def text_block_layout(text, index: int = 0) -> tuple[int, nn.Module, float]:
    """(heads, activation module, LayerNorm eps) of text block ``index``."""
    block = text.blocks[index]
    if text.library == "open_clip":
        attn, mlp = block.attn, block.mlp
        if not isinstance(attn, nn.MultiheadAttention) or not hasattr(mlp, "c_fc"):
            raise ValueError(f"clip4clip seqTransf: unsupported open_clip text block {type(block).__name__}")
        return attn.num_heads, mlp[1], block.ln_1.eps
    attn = block.self_attn
    heads = getattr(attn, "num_heads", None) or text.text_model.config.num_attention_heads
    return heads, block.mlp.activation_fn, block.layer_norm1.eps


def text_block_state(text, index: int) -> dict[str, torch.Tensor]:
    """Text block ``index``'s tensors under :class:`FrameBlock`'s names (open_clip: as is; transformers:
    q, k, v concatenated into the fused input projection)."""
    block = text.blocks[index]
    if text.library == "open_clip":
        return {k: v for k, v in block.state_dict().items()}
    attn, mlp = block.self_attn, block.mlp
    return {
        "ln_1.weight": block.layer_norm1.weight, "ln_1.bias": block.layer_norm1.bias,
        "attn.in_proj_weight": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
        "attn.in_proj_bias": torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
        "attn.out_proj.weight": attn.out_proj.weight, "attn.out_proj.bias": attn.out_proj.bias,
        "ln_2.weight": block.layer_norm2.weight, "ln_2.bias": block.layer_norm2.bias,
        "mlp.c_fc.weight": mlp.fc1.weight, "mlp.c_fc.bias": mlp.fc1.bias,
        "mlp.c_proj.weight": mlp.fc2.weight, "mlp.c_proj.bias": mlp.fc2.bias,
    }


def text_position_table(text) -> torch.Tensor:
    """The text tower's position embedding, ``(context_length, W)``."""
    if text.library == "open_clip":
        return text.positional_embedding
    return text.text_model.embeddings.position_embedding.weight


def init_from_text(positions: nn.Embedding, blocks: nn.ModuleList, text) -> int:
    """The official initialisation trick (``from_pretrained``): CLIP's *text* position table into the first
    rows of ``positions`` and text blocks ``0 .. len(blocks) - 1`` (as far as the tower goes) into ``blocks``,
    as copies. Returns the number of blocks copied; the others keep the official ``init_weights``."""
    table = text_position_table(text)
    copied = min(len(blocks), text.depth)
    with torch.no_grad():
        positions.weight[:table.shape[0]].copy_(table)
        for i in range(copied):
            state = text_block_state(text, i)
            expected = set(blocks[i].state_dict())
            if set(state) != expected:
                raise ValueError(f"clip4clip: text block {i} has tensors {sorted(set(state) ^ expected)} "
                                 "that a CLIP residual attention block does not (layer scale, extra norms?)")
            blocks[i].load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return copied


def text_width_blocks(text, layers: int) -> nn.ModuleList:
    """``layers`` :class:`FrameBlock` of the text tower's width, head count and activation, with the official
    module's LayerNorm eps (``module_cross.ResidualAttentionBlock`` uses the BERT-style ``LayerNorm``, 1e-12)."""
    heads, activation, _ = text_block_layout(text)
    return nn.ModuleList([FrameBlock(text.width, heads, copy.deepcopy(activation), OFFICIAL_LN_EPS)
                          for _ in range(layers)])


def padding_mask(frame_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``key_padding_mask`` (True = left out) from a frame mask, or None when every frame is valid."""
    if frame_mask is None or bool(frame_mask.all()):
        return None
    return ~frame_mask


class TransformerHeader(SimilarityHeader):
    """``seqTransf``: ``x + blocks(x + pos)`` (text-width blocks copied from CLIP's text tower), then the
    normalised mean. ``proj_in`` / ``proj_out`` exist only when the frame width differs from the text width."""

    name = "seqTransf"

    def __init__(self, text, embed_dim: int, layers: int, num_frames: int) -> None:
        super().__init__(embed_dim)
        width = text.width
        self.num_positions = max(text_position_table(text).shape[0], num_frames)
        self.frame_position_embeddings = nn.Embedding(self.num_positions, width)
        self.blocks = text_width_blocks(text, layers)
        self.apply(_official_init)
        self.proj_in = self.proj_out = None
        if width != embed_dim:
            self.proj_in, self.proj_out = nn.Linear(embed_dim, width), nn.Linear(width, embed_dim)
        self.copied_layers = init_from_text(self.frame_position_embeddings, self.blocks, text)

    def sequence(self, frames, frame_mask):
        t = frames.shape[1]
        if t > self.num_positions:
            raise ValueError(f"clip4clip seqTransf: clips of {t} frames but {self.num_positions} frame positions; "
                             f"build the model with num_frames={t}")
        h = frames if self.proj_in is None else self.proj_in(frames)
        h = h + self.frame_position_embeddings.weight[:t].to(h.dtype)
        padding = padding_mask(frame_mask)
        if padding is not None:
            padding = padding & frame_mask.any(dim=1, keepdim=True)   # an all-masked video attends everywhere
        for block in self.blocks:
            h = block(h, padding)
        if self.proj_out is not None:
            h = self.proj_out(h)
        return frames + h


class CrossHeader(nn.Module):
    """``tightTransf``: a joint transformer over ``[text, frame_1 .. frame_T]`` per (text, video) pair, the
    first token pooled, one linear score (see the module docstring).

    ``forward(frames (B, T, E), frame_mask=None) -> (B, E)`` is the text-agnostic fallback (the ``meanP``
    embedding), so the header can be a ``VideoModel`` aggregator; ``score(frames, texts)`` is ``tightTransf``.
    """

    text_conditioned = True
    name = "tightTransf"

    def __init__(self, text, embed_dim: int, layers: int, num_frames: int, text_chunk: int = 8,
                 dropout: float = CROSS_DROPOUT) -> None:
        super().__init__()
        width = text.width
        self.embed_dim, self.text_chunk = embed_dim, text_chunk
        self.num_positions = max(text_position_table(text).shape[0], num_frames + 1)
        self.position_embeddings = nn.Embedding(self.num_positions, width)   # cross.embeddings (no token types)
        self.dropout = nn.Dropout(dropout)                                    # cross.embeddings.dropout
        self.blocks = text_width_blocks(text, layers)                         # cross.transformer
        self.pool_norm = nn.LayerNorm(width, eps=OFFICIAL_LN_EPS)             # cross.pooler.ln_pool
        self.pool_dense = nn.Linear(width, width)                             # cross.pooler.dense (+ QuickGELU)
        self.pool_activation = QuickGELU()
        self.similarity_dense = nn.Linear(width, 1)
        self.apply(_official_init)
        self.proj_in = nn.Linear(embed_dim, width) if width != embed_dim else None
        self.copied_layers = init_from_text(self.position_embeddings, self.blocks, text)

    # -- inputs ------------------------------------------------------------------
    def _check(self, frames, texts, frame_mask):
        frame_mask = check_frame_mask(frames, frame_mask)
        if frames.shape[-1] != self.embed_dim:
            raise ValueError(f"clip4clip tightTransf expects (V, T, {self.embed_dim}) frame embeddings, "
                             f"got {tuple(frames.shape)}")
        if texts is not None and (texts.ndim != 2 or texts.shape[-1] != self.embed_dim):
            raise ValueError(f"clip4clip tightTransf expects text embeddings (N, {self.embed_dim}), "
                             f"got {tuple(texts.shape)}")
        if frames.shape[1] + 1 > self.num_positions:
            raise ValueError(f"clip4clip tightTransf: clips of {frames.shape[1]} frames need {frames.shape[1] + 1} "
                             f"positions but the header has {self.num_positions}; build the model with "
                             f"num_frames={frames.shape[1]}")
        return frame_mask

    # -- the text-agnostic fallback (aggregator) ----------------------------------------
    def forward(self, frames: torch.Tensor, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ``meanP`` video embedding ``(B, T, E) -> (B, E)``: tightTransf has no embedding per video."""
        return normalised_mean(frames, self._check(frames, None, frame_mask))

    # -- the cross-modal score -------------------------------------------------------
    def pair_scores(self, frames: torch.Tensor, texts: torch.Tensor,
                    padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every text with every video, in one batch of ``n x V`` sequences: ``(V, T, E), (n, E) -> (n, V)``."""
        n, (v, t, _) = texts.shape[0], frames.shape
        tokens = torch.cat([texts[:, None, None, :].expand(n, v, 1, -1),
                            frames[None].expand(n, v, t, -1)], dim=2).reshape(n * v, 1 + t, -1)
        h = tokens if self.proj_in is None else self.proj_in(tokens)
        h = self.dropout(h + self.position_embeddings.weight[:1 + t].to(h.dtype))
        if padding is not None:   # the text token is always a key, so no row is empty
            padding = torch.cat([padding.new_zeros(v, 1), padding], dim=1).repeat(n, 1)
        for block in self.blocks:
            h = block(h, padding)
        pooled = self.pool_activation(self.pool_dense(self.pool_norm(h)[:, 0]))
        return self.similarity_dense(pooled).reshape(n, v)

    def score(self, frame_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
              logit_scale: Optional[torch.Tensor] = None, frame_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(N_texts, N_videos)`` scores from the raw (unnormalised) CLIP embeddings, ``text_chunk`` texts at a
        time. ``logit_scale`` is accepted for the scorer interface and not used: the official score is the
        plain ``similarity_dense`` output, and its loss takes it unscaled."""
        frame_mask = self._check(frame_embeddings, text_embeddings, frame_mask)
        padding = padding_mask(frame_mask)
        rows = [self.pair_scores(frame_embeddings, text_embeddings[start:start + self.text_chunk], padding)
                for start in range(0, text_embeddings.shape[0], self.text_chunk)]
        return torch.cat(rows) if rows else frame_embeddings.new_zeros(0, frame_embeddings.shape[0])


class CrossClassifier(TextClassifier):
    """Scores texts with the tightTransf header: ``logits(video, texts, aux)`` with the frame embeddings
    ``(B, T, E)`` as ``aux`` -> ``(B, N)`` unscaled scores. Works without class names (free text through
    ``VideoModel.text_logits``); a class's text is the raw mean of its template embeddings."""

    def __init__(self, text, class_names: Optional[Sequence[str]], templates: Sequence[str] = ("{}",), *,
                 header: CrossHeader) -> None:
        super().__init__(text, list(class_names or [""]), templates)
        self.class_names = list(class_names or [])
        self._header = [header]   # the model's aggregator; a list so its parameters are registered once

    def encode_classes(self) -> torch.Tensor:
        if not self.class_names:
            raise ValueError("this clip4clip tightTransf model has no class names: score texts with "
                             "model.text_logits(video, texts) or give it classes with adaptvid.set_classes(model, names)")
        return encode_class_prompts(self.text, self.class_names, self.templates, normalize=False)

    def logits(self, video: torch.Tensor, texts: torch.Tensor, aux=None) -> torch.Tensor:
        if aux is None:
            raise ValueError("clip4clip tightTransf's classifier needs the frame embeddings (its video encoder's "
                             "aux output); score cached features with model.aggregator.score(frames, texts)")
        return self._header[0].score(aux, texts.to(aux.dtype)).t()


def make_header(sim_header: str, text, embed_dim: int, layers: int = 4, num_frames: int = 8,
                text_chunk: int = 8) -> nn.Module:
    if sim_header == "tightTransf":
        return CrossHeader(text, embed_dim, layers, num_frames, text_chunk)
    if sim_header == "meanP":
        return MeanPHeader(embed_dim)
    if sim_header == "seqLSTM":
        return LSTMHeader(embed_dim)
    if sim_header == "seqTransf":
        return TransformerHeader(text, embed_dim, layers, num_frames)
    raise ValueError(f"unknown sim_header {sim_header!r}; choose one of {', '.join(SIM_HEADERS)}")


@register_method(
    "clip4clip", CLIP4ClipConfig, family="post-pretraining", claims=("readout",), needs_text=True,
    paper="Luo et al., CLIP4Clip: An Empirical Study of CLIP for End to End Video Clip Retrieval and Captioning, "
          "Neurocomputing 2022",
    help="text-video retrieval: both CLIP towers fine-tuned; similarity header meanP / seqLSTM / seqTransf "
         "(initialised from CLIP's text blocks) over frame embeddings, or tightTransf (a joint text-frames "
         "transformer per caption-video pair); CLIP's logit scale",
)
def apply_clip4clip(model, config: CLIP4ClipConfig) -> None:
    tight = config.sim_header == "tightTransf"
    if tight:
        check_no_text_classifier(model, "clip4clip (tightTransf)", " (it scores texts with its cross encoder)")
    text = model.use_text()
    model.set_readout("embed-mean", project=True)
    if model.class_names and not tight and not isinstance(model.head, TextClassifier):   # keep a prompt learner's
        model.set_text_classifier((config.class_template,))
    if config.train_visual:
        model.backbone.tower.requires_grad_(True)     # at backbone_lr (the official CLIP group)
    if config.train_text:
        text.requires_grad_(True)
    # Trained with CLIP in the official code, always; tightTransf's score does not use it (no gradient there).
    text.logit_scale.requires_grad_(not tight)
    header = make_header(config.sim_header, text, model.embed_dim, config.transf_layers, model.num_frames,
                         config.cross_text_chunk)
    model.set_aggregator(header)
    if tight:
        model.set_video_encoder(FrameEmbeddingsEncoder(model.embed_dim))
        model.head = CrossClassifier(text, model.class_names, (config.class_template,), header=header)
