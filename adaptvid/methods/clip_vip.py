"""CLIP-ViP (Xue, Sun, Liu, Fu, Song, Li, Luo. "CLIP-ViP: Adapting Pre-trained Image-Text Model to
Video-Language Representation Alignment", ICLR 2023; official code microsoft/XPretrain, folder ``CLIP-ViP``:
``src/modeling/CLIP_ViP.py`` (``CLIPVisionViPEmbeddings``, ``CLIPAttention.forward2``,
``CLIPVisionTransformer``), ``src/modeling/VidCLIP.py``, ``src/configs/msrvtt_retrieval/*.json``).

The image tower sees a whole video as one token sequence: M *video proxy tokens*, then the patch tokens
of every frame. As the official code:

* **Proxies** (M = ``vip_proxies``, 4 in every released config: ``add_cls_num: 3`` plus the CLS). Proxy 0
  is the tower's own class embedding; proxies 1..M-1 are new parameters (``added_cls``, drawn N(0, 1)
  since ``torch.randn`` is their only initialisation). Every proxy gets the class position embedding
  (position 0). Each frame's own CLS token is dropped: a frame is its patch tokens.
* **Temporal embedding**: a learned (1, T, D) table, zero at init (``temporal_size`` = the clip's frames,
  12 in the configs), added to every patch token of frame t before the pre-norm; clips of another length
  get it linearly resized (``F.interpolate(mode="linear")``, as the official forward). Proxies get none.
* **Proxy-guided attention** in every block, with the tower's frozen q/k/v/out projections: a proxy
  attends to all proxies and every token of every frame; a frame token attends to the proxies and to the
  tokens of its own frame only. By default (``vip_attention="split"``) two unmasked
  ``F.scaled_dot_product_attention`` calls compute it (frame tokens over ``[proxies, own frame]``, proxies
  over everything), as the official ``forward2`` does, without the masked-out pairs; ``"masked"`` computes
  the same with one attention over the video's sequence and a boolean mask of exactly this pattern
  (``proxy_guided_mask``), at a much higher cost: 612.6 vs 428.2 GFLOPs per 12-frame ViT-B/16 clip (bare
  tower 421.5), 121.3 vs 112.1 on B/32 (bare 105.8). The norms, MLP and residuals are the block's own.
* **Readout**: the final proxy 0 (the CLS position) -> final norm -> projection (``pooled_output =
  last_hidden_state[:, 0]``); the other proxies only take part in attention.

In adaptvid's per-frame layout ``(B*T, L, D)``: the embedding module (``before_pre_norm``) replaces each
frame's CLS by the M proxies, so every frame carries an identical copy of them, and the backbone's
``num_prefix_tokens`` grows by M-1 (methods that read the patch grid, such as ST-Adapter, skip them).
The ``attention`` module attends over each video's tokens (the proxies taken from frame 0's copy) and
writes the proxies' result back into every frame's copy; the MLP works per token, so the copies stay
identical and the model's ``embed-mean`` readout (the mean over frames of ``head(token 0)``) is
``head(proxy 0)``. The price is the MLP on T copies of M proxies (+8% of the tokens on ViT-B/32 at 12
frames, +2% on B/16).

Trained, as the paper (post-pretraining and fine-tuning train the whole CLIP model; the retrieval
configs freeze nothing, one learning rate): the new proxies and the temporal embedding, the image tower
(``train_visual``, at ``backbone_lr``), and, for retrieval (a model built without classes), the text tower
and CLIP's logit scale (``train_text``). With a linear classifier the text tower is not used and stays out.
New parameters: (M - 1) x D + T x D = 3 x 768 + 12 x 768 = 11,520 on ViT-B/16 and ViT-B/32 (12 frames).

Differences from the official code: the official optimiser puts weight decay on the proxies and the
temporal embedding; adaptvid's parameter groups do not decay embeddings or tokens. The official
retrieval runs set CLIP's logit scale to 4.60 (CLIP's own is ln 100 = 4.605); adaptvid keeps CLIP's.
The post-pretraining stage (HD-VILA-100M with OFA auxiliary captions, the Omnisource cross-modal loss)
is not part of this method: it fine-tunes from the image weights it is given.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import BlockView, FrameContext
from .registry import register_method

NAME = "clip-vip"
KEY = "clip_vip"   # module key in the slots and before_pre_norm
ATTENTION_MODES = ("masked", "split")


@dataclass
class ClipViPConfig:
    vip_proxies: int = field(default=4, metadata={
        "help": "video proxy tokens M, the tower's CLS included (official 4: add_cls_num 3 + CLS)"})
    vip_temporal_embedding: bool = field(default=True, metadata={
        "help": "learned temporal embedding added to each frame's patch tokens (official on)"})
    vip_attention: str = field(default="split", metadata={
        "help": "how the proxy-guided attention is computed: 'split' (frame tokens over [proxies, own frame], "
                "proxies over everything: two unmasked attentions, as the official forward2) or 'masked' (one "
                "attention over the video's sequence with the pattern as a mask: the same result, ~1.45x the "
                "FLOPs of the plain tower on ViT-B/16 at 12 frames instead of 1.016x)"})
    train_visual: bool = field(default=True, metadata={
        "help": "fine-tune the image tower (the paper fine-tunes all of CLIP); False trains only the proxies "
                "and the temporal embedding"})
    train_text: bool = field(default=True, metadata={
        "help": "for retrieval (no classes): fine-tune the CLIP text tower and logit scale, as the paper"})

    def __post_init__(self) -> None:
        if self.vip_proxies < 1:
            raise ValueError(f"clip-vip needs vip_proxies >= 1 (the CLS is the first), got {self.vip_proxies}")
        if self.vip_attention not in ATTENTION_MODES:
            raise ValueError(f"clip-vip vip_attention must be one of {', '.join(ATTENTION_MODES)}, "
                             f"got {self.vip_attention!r}")


def proxy_guided_mask(proxies: int, frames: int, tokens: int, device=None) -> torch.Tensor:
    """The (S, S) boolean attention mask of one video's sequence ``[M proxies, T x L frame tokens]``,
    S = M + T * L; True = may attend. Proxies see everything; a frame token sees the proxies and its frame."""
    owner = torch.cat([torch.full((proxies,), -1, device=device),
                       torch.arange(frames, device=device).repeat_interleave(tokens)])
    is_proxy = owner < 0
    return is_proxy[:, None] | is_proxy[None, :] | (owner[:, None] == owner[None, :])


class _ClassToken:
    """The tower's class embedding and class position embedding, read from the library's modules on each
    call. A plain object (not a module), so the tower's parameters are not registered twice."""

    def __init__(self, backbone) -> None:
        self.library = backbone.library
        tower = backbone.tower
        if self.library == "open_clip":
            self.owner = tower
        elif self.library == "transformers":
            self.owner = tower.vision_model.embeddings
        elif self.library == "timm":
            self.owner = tower
            if getattr(tower, "cls_token", None) is None:
                raise ValueError(f"clip-vip reads the video from the class token, but backbone {backbone.name!r} "
                                 "has none (a timm ViT built with class_token=False); choose a ViT with a CLS token")
        else:
            raise ValueError(f"clip-vip does not know where backbone {backbone.name!r} ({self.library}) keeps its "
                             "class embedding; use an open_clip, transformers or timm ViT")

    def parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(class embedding, position embedding of the class position), each (D,)."""
        o = self.owner
        if self.library == "open_clip":
            return o.class_embedding, o.positional_embedding[0]
        if self.library == "transformers":
            return o.class_embedding, o.position_embedding.weight[0]
        cls = o.cls_token[0, 0]
        # timm's no_embed_class towers give the prefix tokens no position embedding
        position = cls.new_zeros(()) if getattr(o, "no_embed_class", False) else o.pos_embed[0, 0]
        return cls, position


class VideoProxies(nn.Module):
    """``before_pre_norm``: each frame's CLS replaced by the M proxies (class embedding and the M-1 added
    tokens, each plus the class position embedding); the temporal embedding added to the patch tokens."""

    def __init__(self, backbone, num_proxies: int, num_frames: int, prefix: int, temporal: bool) -> None:
        super().__init__()
        width = backbone.width
        self.class_token = _ClassToken(backbone)
        self.prefix = prefix   # the frame's prefix tokens (CLS first); its patches follow
        self.added_proxy_tokens = nn.Parameter(torch.randn(num_proxies - 1, width))   # official: torch.randn
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, width)) if temporal else None

    def proxies(self) -> torch.Tensor:
        cls, position = self.class_token.parts()
        return torch.cat([cls[None], self.added_proxy_tokens.to(cls.dtype)], dim=0) + position

    def time_table(self, frames: int) -> torch.Tensor:
        """(T, D): the table, linearly resized to clips of another length as the official forward."""
        table = self.temporal_embedding
        if frames != table.shape[1]:
            table = F.interpolate(table.transpose(1, 2), size=frames, mode="linear").transpose(1, 2)
        return table[0]

    def forward(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        n, length, width = x.shape
        frames = ctx.num_frames
        own_prefix, patches = x[:, 1:self.prefix], x[:, self.prefix:]
        if self.temporal_embedding is not None:
            table = self.time_table(frames).to(x.dtype)
            patches = (patches.reshape(n // frames, frames, -1, width) + table[None, :, None]).reshape(n, -1, width)
        proxies = self.proxies().to(x.dtype).expand(n, -1, -1)
        return torch.cat([proxies, own_prefix, patches], dim=1)

    def extra_repr(self) -> str:
        frames = None if self.temporal_embedding is None else self.temporal_embedding.shape[1]
        return f"proxies={self.added_proxy_tokens.shape[0] + 1}, temporal_frames={frames}"


class ProxyGuidedAttention(nn.Module):
    """``attention``: the block's frozen attention with the proxy-guided pattern; the proxies' output is
    written into every frame's copy.

    ``masked``: one attention over each video's sequence ``[M proxies, all frames' tokens]`` with
    ``proxy_guided_mask``. ``split``: the frame tokens attend over their own frame's sequence ``[proxies,
    frame tokens]`` (exactly the keys the mask allows them) and the proxies over ``[proxies, every frame]``,
    both unmasked, as the official ``forward2``; the masked-out pairs are never computed (on ViT-B/16 at 12
    frames the mask makes the attention ~12x larger)."""

    def __init__(self, view: BlockView, num_proxies: int, mode: str = "masked") -> None:
        super().__init__()
        if view.qkv is None or view.attn_out is None:
            raise ValueError(f"clip-vip needs the q/k/v handles of the tower's attention; block "
                             f"{type(view.block).__name__} offers none")
        self.view = view   # a plain dataclass: the frozen projections stay the tower's
        self.num_proxies = num_proxies
        self.mode = mode
        self._masks: dict = {}

    def mask(self, frames: int, tokens: int, device) -> torch.Tensor:
        key = (frames, tokens, str(device))
        if key not in self._masks:
            self._masks = {key: proxy_guided_mask(self.num_proxies, frames, tokens, device)}   # keep the last only
        return self._masks[key]

    def forward(self, xn: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        return self._split(xn, ctx.num_frames) if self.mode == "split" else self._masked(xn, ctx.num_frames)

    def _masked(self, xn: torch.Tensor, frames: int) -> torch.Tensor:
        n, length, width = xn.shape
        m = self.num_proxies
        videos, tokens = n // frames, length - m
        proxies = xn.reshape(videos, frames, length, width)[:, 0, :m]          # the copies are identical
        sequence = torch.cat([proxies, xn[:, m:].reshape(videos, frames * tokens, width)], dim=1)
        q, k, v = self.view.qkv(sequence)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(frames, tokens, xn.device))
        h = self.view.attn_out(o)                                               # (B, M + T*L, D)
        proxy_out = h[:, :m].unsqueeze(1).expand(videos, frames, m, width).reshape(n, m, width)
        return torch.cat([proxy_out, h[:, m:].reshape(n, tokens, width)], dim=1)

    def _split(self, xn: torch.Tensor, frames: int) -> torch.Tensor:
        n, length, _ = xn.shape
        m = self.num_proxies
        videos = n // frames
        q, k, v = self.view.qkv(xn)                                  # per frame: (B*T, heads, M + L, hd)
        heads, dim = q.shape[1], q.shape[3]
        frame_out = F.scaled_dot_product_attention(q[:, :, m:], k, v)    # frame tokens: [proxies, own frame]

        def whole_video(t: torch.Tensor) -> torch.Tensor:               # [frame 0's proxies, every frame's tokens]
            t = t.reshape(videos, frames, heads, length, dim)
            return torch.cat([t[:, 0, :, :m], t[:, :, :, m:].transpose(1, 2).reshape(videos, heads, -1, dim)], dim=2)

        proxy_q = q.reshape(videos, frames, heads, length, dim)[:, 0, :, :m]
        proxy_out = F.scaled_dot_product_attention(proxy_q, whole_video(k), whole_video(v))   # (B, heads, M, hd)
        proxy_out = proxy_out.unsqueeze(1).expand(videos, frames, heads, m, dim).reshape(n, heads, m, dim)
        return self.view.attn_out(torch.cat([proxy_out, frame_out], dim=2))

    def extra_repr(self) -> str:
        return f"proxies={self.num_proxies}, mode={self.mode}"


def _check_composition(model) -> None:
    """Refuse, with the reason, the tower methods whose modules cannot work on clip-vip's token layout."""
    from .lora import check_attention_sees_lora

    backbone = model.backbone
    applied = {name for name, _ in model.methods}
    if len(backbone.after_embed):
        names = ", ".join(backbone.after_embed)
        raise ValueError(f"{names} inserts tokens after the CLS token, among clip-vip's video proxies (which "
                         f"replace the CLS); choose one of them (vpt: use vpt_depth='deep')")
    if "aim" in applied:
        raise ValueError("aim's temporal adapter and drop path act on each frame's tokens at every position, "
                         "clip-vip's video proxies included, which clip-vip keeps as one copy per video shared "
                         "by all frames; choose one of aim and clip-vip")
    if "vita-clip" in applied:
        raise ValueError("vita-clip builds its local prompts and summary tokens from each frame's CLS token, "
                         "which clip-vip removes (the CLS position holds the video's proxy); choose one of "
                         "vita-clip and clip-vip")
    check_attention_sees_lora(model, NAME, range(backbone.depth))


@register_method(
    NAME, ClipViPConfig, family="post-pretraining", aliases=("clipvip",), claims=("readout", "attention"),
    paper="Xue, Sun, Liu, Fu, Song, Li, Luo. CLIP-ViP: Adapting Pre-trained Image-Text Model to Video-Language "
          "Representation Alignment, ICLR 2023",
    help="video proxy tokens + proxy-guided attention (frames see the proxies and themselves); temporal "
         "embedding; video read from the first proxy; CLIP fine-tuned",
)
def apply_clip_vip(model, config: ClipViPConfig) -> None:
    from ._readout import record_readout

    _check_composition(model)
    backbone = model.backbone
    prefix = backbone.num_prefix_tokens
    if prefix < 1:
        raise ValueError(f"clip-vip reads the video from the class token, but backbone {backbone.name!r} has no "
                         "prefix token; choose a ViT with a CLS token")
    m = config.vip_proxies
    backbone.before_pre_norm[KEY] = VideoProxies(backbone, m, model.num_frames, prefix,
                                                 config.vip_temporal_embedding)
    backbone.num_prefix_tokens = prefix - 1 + m   # the contexts of every later step see the proxies as prefix
    for view, slot in zip(backbone.views, backbone.slots):
        slot.add("attention", KEY, ProxyGuidedAttention(view, m, config.vip_attention))
    if config.train_visual:
        backbone.tower.requires_grad_(True)   # at backbone_lr, as full fine-tuning
    # The video is read from the first proxy, identical in every frame: the mean of the frame embeddings is it.
    record_readout(model, NAME, "embed-mean")
    model.set_readout("embed-mean", project=True)
    if model.num_classes is None and backbone.text is not None and config.train_text:
        text = model.use_text()   # retrieval: the text tower and the temperature train with the image tower
        text.requires_grad_(True)
