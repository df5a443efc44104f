"""The backbone protocol: one small interface over every supported image tower.

A backbone wraps a library's own image tower (open_clip, transformers, timm)
without copying its weights. It exposes what methods need and nothing else:

* ``embed(images)``: patch embedding + prefix (CLS) tokens + position
  embedding + pre-norm, giving batch-first tokens ``(N, L, D)``;
* ``views``: one :class:`BlockView` per transformer block (norm1, attention,
  norm2, MLP, layer scales) — handles into the library's modules;
* ``head(cls)``: final norm and projection of the CLS token, giving the
  image embedding the library's own forward would give.

Methods add their modules to per-block :class:`Slot` containers owned by the
backbone wrapper, never to the library's modules, so checkpoints and
parameter counts keep new and frozen weights apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Preprocess:
    """The input statistics that belong to a set of weights."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


@dataclass
class BlockView:
    """Handles into one library block; every callable is batch-first (N, L, D).

    ``qkv(xn)`` gives the attention's queries, keys and values on normalised
    tokens, each ``(N, heads, L, head_dim)`` (after any q/k norm), and
    ``attn_out(o)`` maps an attention result of that shape back to ``(N, L, D)``
    through the output projection — so a method can change which keys and
    values a query sees (``attention(q, k, v)``) while reusing the frozen weights.
    """

    block: nn.Module                      # the library's block, for its fused forward
    norm1: nn.Module
    attn: Callable[[torch.Tensor], torch.Tensor]   # self-attention on normalised tokens
    attn_module: nn.Module                # the attention module itself (q/k/v, out proj)
    residual1: Callable[[torch.Tensor], torch.Tensor]  # layer scale / drop path on the attn branch
    norm2: nn.Module
    mlp: nn.Module
    residual2: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor] = None  # the library's own block call
    qkv: Optional[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None
    attn_out: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    num_heads: int = 0


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scaled dot-product attention over (N, heads, L, head_dim) tensors (fused kernels where available)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, L, D) -> (N, heads, L, D / heads)."""
    n, length, width = x.shape
    return x.reshape(n, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, head_dim) -> (N, L, heads * head_dim)."""
    n, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dim)


@dataclass
class FrameContext:
    """What a method module needs to see across frames: frames are folded into the batch."""

    num_frames: int
    grid: tuple[int, int]
    num_prefix_tokens: int
    tag: str = ""   # set by a method that runs the tower on other inputs (e.g. DualPath's temporal path)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """(B*T, L, D) -> (B, T, L, D)."""
        return x.reshape(-1, self.num_frames, *x.shape[1:])


# Where method modules sit in a block, in the order the block runs them:
#   before_attn   m(x, ctx) -> x          on the residual stream, before norm1
#   attn_tokens   m(x, ctx) -> (N, k, D)  extra tokens appended to the residual stream for this block's
#                                         attention only (they go through norm1, are attended to, and are
#                                         dropped after it): deep visual prompts (VPT), X-CLIP's message
#                                         token, Vita-CLIP's video / frame / summary tokens
#   attention     m(xn, ctx) -> h         replaces the self-attention on norm1(x) (one module at most)
#   attn_branch   m(h, ctx) -> h          transforms the attention branch before its residual add
#   before_mlp    m(x, ctx) -> x          on the residual stream, before norm2
#   mlp_in        m(xn, ctx) -> xn        transforms norm2(x) before the MLP (serial adapters)
#   mlp_parallel  m(xn, ctx) -> delta     beside the MLP on norm2(x); added to the MLP's output
#   mlp_out       m(h, ctx) -> h          transforms the MLP branch before its residual add
#   after_block   m(x, ctx) -> x          on the residual stream, after the block
HOOK_POINTS = ("before_attn", "attn_tokens", "attention", "attn_branch", "before_mlp", "mlp_in", "mlp_parallel", "mlp_out",
               "after_block")


class Slot(nn.Module):
    """Per-block container for method modules, one ModuleDict per hook point (see HOOK_POINTS)."""

    def __init__(self) -> None:
        super().__init__()
        for point in HOOK_POINTS:
            setattr(self, point, nn.ModuleDict())

    def is_empty(self) -> bool:
        return all(len(getattr(self, p)) == 0 for p in HOOK_POINTS)

    def add(self, point: str, name: str, module: nn.Module) -> None:
        if point not in HOOK_POINTS:
            raise ValueError(f"unknown hook point {point!r}; choose one of {HOOK_POINTS}")
        container = getattr(self, point)
        if name in container:
            raise ValueError(f"a module named {name!r} already sits at {point}")
        if point == "attention" and len(container):
            raise ValueError(f"{name!r} cannot replace the attention: {next(iter(container))!r} already does")
        container[name] = module


def run_block(view: BlockView, slot: Slot, x: torch.Tensor, ctx: FrameContext,
              capture_qk: Optional[list] = None) -> torch.Tensor:
    """One pre-norm transformer block with the slot's method modules in place.

    An empty slot calls the library's own block so an unmodified model is
    computed by exactly the library's code. With ``capture_qk`` (a list), the
    attention runs through the q/k/v handles and its (q, k) are appended to
    it — at no extra cost, for decoders that read them (EVL).
    """
    if slot.is_empty() and capture_qk is None:
        return view.forward(x)
    for module in slot.before_attn.values():
        x = module(x, ctx)
    length = x.shape[1]
    if len(slot.attn_tokens):  # extra tokens are seen by this attention only; their outputs are dropped
        x_attn = torch.cat([x] + [module(x, ctx) for module in slot.attn_tokens.values()], dim=1)
        xn = view.norm1(x_attn)
    else:
        xn = view.norm1(x)
    if len(slot.attention):
        if capture_qk is not None:
            raise ValueError("cannot hand out attention q/k of a block whose attention a method replaces")
        h = next(iter(slot.attention.values()))(xn, ctx)
    elif capture_qk is not None:
        if view.qkv is None:
            raise ValueError(f"block {type(view.block).__name__} offers no q/k/v handles to capture")
        q, k, v = view.qkv(xn)
        capture_qk.append((q[:, :, :length], k[:, :, :length]))
        h = view.attn_out(attention(q, k, v))
    else:
        h = view.attn(xn)
    h = h[:, :length]
    for module in slot.attn_branch.values():
        h = module(h, ctx)
    x = x + view.residual1(h)
    for module in slot.before_mlp.values():
        x = module(x, ctx)
    xn = view.norm2(x)
    xm = xn
    for module in slot.mlp_in.values():
        xm = module(xm, ctx)
    h = view.mlp(xm)
    for module in slot.mlp_parallel.values():
        h = h + module(xn, ctx)
    for module in slot.mlp_out.values():
        h = module(h, ctx)
    x = x + view.residual2(h)
    for module in slot.after_block.values():
        x = module(x, ctx)
    return x


class Backbone(nn.Module):
    """Base class: subclasses set the attributes below and implement embed/head/_make_views."""

    library: str = ""
    width: int           # token width D
    embed_dim: int       # width of head(cls), the image embedding
    num_heads: int
    patch_size: int
    image_size: int
    num_prefix_tokens: int = 1
    preprocess: Preprocess

    def __init__(self, name: str, tower: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.tower = tower       # the library's image tower: frozen weights stay here
        self.slots = nn.ModuleList()
        # Modules called as m(tokens, ctx) on the embedded tokens, before / after the pre-norm
        # (e.g. a temporal position embedding goes before it, as in AIM and ZeroI2V).
        self.before_pre_norm = nn.ModuleDict()
        self.after_embed = nn.ModuleDict()
        self._views: Optional[list[BlockView]] = None
        self.text = None         # text tower handle (not a submodule) for text-side methods
        # Training-efficiency switches (TrainConfig.grad_checkpoint / token_drop; both act in training mode only):
        # recompute each block in backward instead of keeping its activations, and drop this fraction of each
        # frame's patch tokens (prefix tokens kept) right after the patch embedding (FLIP).
        self.grad_checkpoint = False
        self.token_drop = 0.0

    # -- implemented by each library wrapper ---------------------------------
    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Patch embedding + prefix tokens + position embedding (+ patch dropout), before the pre-norm."""
        raise NotImplementedError

    def pre_norm(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The tokens the first block sees, (N, L, D)."""
        return self.pre_norm(self.embed_tokens(images))

    def head(self, cls: torch.Tensor, project: bool = True) -> torch.Tensor:  # pragma: no cover - abstract
        """Final norm (and, with ``project``, the projection into the joint image-text space)."""
        raise NotImplementedError

    def final_norms(self) -> list[nn.Module]:  # pragma: no cover - abstract
        """The norm(s) ``head`` applies to the CLS token (methods such as AIM and ZeroI2V train them)."""
        raise NotImplementedError

    def library_forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The library's own image embedding, for equivalence tests."""
        raise NotImplementedError

    def _make_views(self) -> list[BlockView]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------
    @property
    def views(self) -> list[BlockView]:
        if self._views is None:
            self._views = self._make_views()
            if len(self.slots) != len(self._views):  # first build; a refresh keeps the methods' modules
                self.slots = nn.ModuleList(Slot() for _ in self._views)
        return self._views

    def __getstate__(self) -> dict:
        # The cached views hold closures over this instance's modules: a copy (deepcopy, pickle)
        # must rebuild its own from its own modules, keeping its slots.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_views"] = None
        return state

    def refresh_views(self) -> None:
        """Re-read the handles after a method replaced library modules (e.g. LoRA merge); slots are kept."""
        self._views = None

    @property
    def depth(self) -> int:
        return len(self.views)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return (side, side)

    def context(self, num_frames: int, tag: str = "") -> FrameContext:
        return FrameContext(num_frames=num_frames, grid=self.grid, num_prefix_tokens=self.num_prefix_tokens, tag=tag)

    def forward_tokens(
        self,
        images: torch.Tensor,
        ctx: FrameContext,
        return_layers: Sequence[int] = (),
        qk_out: Optional[dict] = None,
        qk_layers: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the tower on (N, C, H, W) frames; return final tokens and requested layers' outputs.

        For each block index in ``qk_layers``, ``qk_out[index]`` receives that block's attention
        (q, k), each (N, heads, L, head_dim).
        """
        views = self.views
        x = self.embed_tokens(images)
        if self.training and self.token_drop > 0:
            x = self.drop_tokens(x, self.token_drop)
        for module in self.before_pre_norm.values():
            x = module(x, ctx)
        x = self.pre_norm(x)
        for module in self.after_embed.values():
            x = module(x, ctx)
        taken = []
        for index, (view, slot) in enumerate(zip(views, self.slots)):
            capture = [] if index in qk_layers else None
            if self.grad_checkpoint and capture is None and self.training and torch.is_grad_enabled():
                # non-reentrant: the RNG state (dropout, drop path) is replayed, so the recomputed block equals
                # the first pass; running statistics are restored after the recomputation (no double update)
                x = checkpoint(run_block, view, slot, x, ctx, use_reentrant=False,
                               context_fn=lambda slot=slot: (contextlib.nullcontext(), _running_stats_kept(slot)))
            else:
                x = run_block(view, slot, x, ctx, capture)
            if capture:
                qk_out[index] = capture[0]
            if index in return_layers:
                taken.append(x)
        return x, taken

    def drop_tokens(self, tokens: torch.Tensor, fraction: float) -> torch.Tensor:
        """Keep the prefix (CLS) tokens and a random ``1 - fraction`` of each frame's patch tokens, in their
        order (FLIP; ``int(patches * (1 - fraction))`` kept, at least one). Draws from torch's global generator,
        so a seed makes it reproducible; ``tokens`` are the embedded (N, prefix + patches, D) tokens."""
        n, length, width = tokens.shape
        patches = self.grid[0] * self.grid[1]
        prefix = length - patches
        if prefix < 0:
            raise ValueError(f"token drop: {length} embedded tokens, fewer than the {self.grid} patch grid")
        keep = max(1, int(patches * (1 - fraction)))
        order = torch.rand(n, patches, device=tokens.device).argsort(dim=1)[:, :keep].sort(dim=1).values
        kept = tokens[:, prefix:].gather(1, order.unsqueeze(-1).expand(-1, -1, width))
        return torch.cat([tokens[:, :prefix], kept], dim=1)

    def forward(self, images: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """Image embedding of each frame, (N, embed_dim)."""
        tokens, _ = self.forward_tokens(images, self.context(num_frames))
        return self.head(tokens[:, 0])


@contextlib.contextmanager
def _running_stats_kept(slot: Slot):
    """Around a checkpointed block's recomputation: put back the running statistics (BatchNorm) of the slot's
    modules, which the first pass already updated."""
    stats = [(m, name, getattr(m, name).clone()) for m in slot.modules() if getattr(m, "track_running_stats", False)
             for name in ("running_mean", "running_var", "num_batches_tracked") if getattr(m, name, None) is not None]
    try:
        yield
    finally:
        for module, name, value in stats:
            getattr(module, name).copy_(value)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x
