"""Open-VCLIP (Weng, Yang, Li, Wu, Jiang. Open-VCLIP: Transforming CLIP to an Open-vocabulary Video Model
via Interpolated Weight Optimization. ICML 2023).

Three parts, none with new parameters:

* **Expanded temporal view** in every block's self-attention: the queries of frame t
  attend to the keys and values of frames t+1, t-1 and t concatenated (3L keys),
  through the frozen-shape CLIP projections. The official ``expand_temporal_view``
  (``slowfast/models/torch_utils/functional.py``) fills the missing neighbour of the
  first and last frame with **zero** keys and values, which stay in the softmax
  (each adds weight ``exp(0)`` with a zero value). ``ends="zero"`` reproduces that
  (the default); ``ends="existing"`` masks the missing neighbour out instead, so a
  one-frame clip, or a clip of identical frames, gives exactly the image model.
* **Readout** as in the official ``TemporalClipVideo``: each frame's embedding is
  L2-normalised and scored against the class texts, and the logits are averaged over
  frames (here: the mean of normalised frame embeddings, then a dot product with the
  normalised class embeddings, times CLIP's temperature — the same number). The class
  embeddings average 28 templates ("a photo of {}." ... "a demonstration of a person
  practicing {}."). The official code encodes them once, without gradient, so the text
  tower does not train (``train_text=False``, the default); the image tower and CLIP's
  logit scale do, at one learning rate (``--lr``).
* **Interpolated weight optimisation** (IWO). Training adds, at every step, the loss
  at weights interpolated towards the original CLIP, ``theta_a = a*theta_0 + (1-a)*theta``
  with ``a ~ U(0, 0.6)``, weighted 0.5; its gradient (with respect to ``theta_a``) is
  added to the plain one (:func:`iwo_loss`). At test time the fine-tuned weights are
  *patched* half-way back to CLIP (:func:`patch_weights`, ratio 0.5). The official run
  also averages the checkpoints of epochs 2..22 (SWA, ``weight_average.py``).

A CPU copy of the original weights of everything the method trains is kept
(``model.open_vclip_original``; ``keep_original_weights=False`` drops it), so
patching a checkpoint needs nothing but the checkpoint: ``load_model`` rebuilds the
model from the original CLIP, which is what the copy records, before it loads the
fine-tuned tensors.

IWO is registered in ``model.extra_losses`` (``ovc_iwo_weight``, the official 0.5; 0 turns
it off), so ``adaptvid adapt`` adds it to every step's loss (a second forward); custom loops
call it the same way: ``loss = CE(model(v), y) + sum(f(model, v, y) for f in model.extra_losses)``.
SWA is not applied.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone, FrameContext
from ..backbones.base import attention
from ..text import TextClassifier
from ._text_heads import train_clip_logit_scale
from .registry import register_method
from .vifi_clip import unfreeze_text

NAME = "open-vclip"
ENDS = ("zero", "existing")
# The official class-prompt ensemble: four openings x seven phrasings (text_prompt in temporalclip_video_model.py).
_OPENINGS = ("a photo of", "a video of", "a example of", "a demonstration of")
_PHRASINGS = ("{}.", "a person {}.", "a person using {}.", "a person doing {}.", "a person during {}.",
              "a person performing {}.", "a person practicing {}.")
OPEN_VCLIP_TEMPLATES = tuple(f"{opening} {phrasing}" for opening in _OPENINGS for phrasing in _PHRASINGS)


@dataclass
class OpenVCLIPConfig:
    ovc_ends: str = field(default="zero", metadata={
        "help": "the missing neighbour of the first/last frame: 'zero' keys and values (the official code) "
                "or 'existing' (masked out: only the frames that exist)"})
    train_text: bool = field(default=False, metadata={
        "help": "also fine-tune the text tower (the official Open-VCLIP encodes the classes once, text frozen)"})
    keep_original_weights: bool = field(default=True, metadata={
        "help": "keep a copy of the original CLIP weights of what is trained, for patch_weights and iwo_loss"})
    ovc_iwo_weight: float = field(default=0.5, metadata={
        "help": "weight of the interpolated-weight regulariser added to the training loss by adaptvid adapt "
                "(the official 0.5; a second forward per step); 0 turns it off"})

    def __post_init__(self) -> None:
        if self.ovc_ends not in ENDS:
            raise ValueError(f"open-vclip ovc_ends must be one of {ENDS}, got {self.ovc_ends!r}")
        if self.ovc_iwo_weight < 0:
            raise ValueError(f"open-vclip ovc_iwo_weight must be >= 0, got {self.ovc_iwo_weight}")
        if self.ovc_iwo_weight and not self.keep_original_weights:
            raise ValueError("open-vclip's interpolated-weight regulariser needs the original weights: "
                             "keep_original_weights=True, or ovc_iwo_weight=0")


# -- the expanded temporal view ---------------------------------------------------------------

def expand_temporal_view(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(B*T, heads, L, d) -> (B*T, heads, 3L, d)``: frame t+1's, frame t-1's and frame t's
    tokens side by side; the last frame's "next" and the first frame's "previous" are zeros."""
    n, heads, length, dim = x.shape
    if n % num_frames:
        raise ValueError(f"open-vclip: {n} frames are not a whole number of {num_frames}-frame clips")
    v = x.reshape(n // num_frames, num_frames, heads, length, dim)
    zero = v.new_zeros(v.shape[0], 1, heads, length, dim)
    following = torch.cat([v[:, 1:], zero], dim=1)
    previous = torch.cat([zero, v[:, :-1]], dim=1)
    return torch.cat([following, previous, v], dim=3).reshape(n, heads, 3 * length, dim)


def neighbour_mask(num_clips: int, num_frames: int, length: int, device) -> torch.Tensor:
    """``(B*T, 1, 1, 3L)`` boolean, True where a key exists: the last frame has no next, the first no previous."""
    t = torch.arange(num_frames, device=device)
    blocks = torch.stack([t < num_frames - 1, t > 0, torch.ones_like(t, dtype=torch.bool)], dim=1)  # (T, 3)
    mask = blocks.repeat_interleave(length, dim=1)                                                  # (T, 3L)
    return mask.repeat(num_clips, 1)[:, None, None, :]


class ExpandedTemporalAttention(nn.Module):
    """Replaces a block's self-attention: frozen-shape q/k/v, keys and values of t-1, t, t+1, output projection.

    The projections are the tower's own (reached through the block view at call time, so
    fine-tuning and weight patching act on them directly); nothing is copied.
    """

    def __init__(self, backbone: Backbone, index: int, ends: str) -> None:
        super().__init__()
        object.__setattr__(self, "_backbone", backbone)  # a handle, not a submodule
        self.index = index
        self.ends = ends

    def forward(self, xn: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        view = self._backbone.views[self.index]
        q, k, v = view.qkv(xn)
        frames = ctx.num_frames
        if frames == 1 and self.ends == "existing":  # no neighbour at all: the plain attention
            return view.attn_out(attention(q, k, v))
        mask = None
        if self.ends == "existing":
            mask = neighbour_mask(q.shape[0] // frames, frames, k.shape[2], q.device)
        return view.attn_out(attention(q, expand_temporal_view(k, frames), expand_temporal_view(v, frames), mask))

    def extra_repr(self) -> str:
        return f"block={self.index}, keys=frames t-1,t,t+1, ends={self.ends}"


# -- the readout ----------------------------------------------------------------------------

class NormalizedFrameMean(nn.Module):
    """``(B, T, E) -> (B, E)``: the mean of L2-normalised frame embeddings (its dot product with a
    normalised class embedding is the mean of the per-frame cosine logits, as the official code scores)."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return F.normalize(frames, dim=-1).mean(dim=1)


class FrameLogitClassifier(TextClassifier):
    """``scale * video @ normalize(class_texts).T`` without renormalising the video embedding (it is already
    a mean of unit vectors)."""

    def logits(self, video: torch.Tensor, texts: torch.Tensor, aux=None) -> torch.Tensor:
        return self.logit_scale().to(video.device).exp() * video @ F.normalize(texts, dim=-1).t()


# -- the original weights, patching and IWO --------------------------------------------------

class OriginalWeights:
    """A CPU copy of some model parameters, by name. Deliberately not module buffers: they would double
    the model's GPU memory and be broadcast by DDP at every step. A device copy is made on first use."""

    def __init__(self, named: Mapping[str, torch.Tensor]) -> None:
        self._copies = {"cpu": {name: t.detach().to("cpu", copy=True) for name, t in named.items()}}

    def state(self, device=None) -> dict[str, torch.Tensor]:
        key = str(torch.device(device)) if device is not None else "cpu"
        if key not in self._copies:
            self._copies[key] = {name: t.to(key) for name, t in self._copies["cpu"].items()}
        return self._copies[key]


def _original_state(model, original) -> dict[str, torch.Tensor]:
    """Original weights keyed by the model's parameter names, from any of the accepted sources."""
    if original is None:
        kept = getattr(model, "open_vclip_original", None)
        if kept is None:
            raise ValueError("this model kept no copy of the original CLIP weights (keep_original_weights=False); "
                             "pass original= a state dict, a freshly built model or the backbone")
        return kept.state(next(model.parameters()).device)
    if isinstance(original, Backbone):
        state = {f"backbone.tower.{n}": p for n, p in original.tower.named_parameters()}
        if getattr(original, "text", None) is not None and getattr(model, "text", None) is not None:
            from ..text import make_text_encoder

            state.update({f"text.{n}": p for n, p in make_text_encoder(original).named_parameters()})
        return state
    if isinstance(original, nn.Module):
        return dict(original.named_parameters())
    return dict(original)


@torch.no_grad()
def patch_weights(model, original: Union[None, Mapping[str, torch.Tensor], nn.Module] = None,
                  ratio: float = 0.5):
    """Blend the fine-tuned weights with the original CLIP weights, in place: ``lerp(original, finetuned, ratio)``.

    ``ratio`` is the weight of the fine-tuned model: 0 gives the original exactly, 1 the fine-tuned
    weights exactly, 0.5 is the paper's test-time patching (the official ``TEST.PATCHING_RATIO`` counts
    the other way, as the weight of the original: it is ``1 - ratio``). ``original``: None (the copy the
    model kept), a state dict keyed by the model's parameter names, a freshly built model, or the
    backbone (tower and text weights). Every trained parameter must have an original; returns the model.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"patch ratio must be in [0, 1] (weight of the fine-tuned model), got {ratio}")
    state = _original_state(model, original)
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    missing = [name for name in trained if name not in state]
    if missing:
        raise ValueError(f"no original weights for {len(missing)} trained parameter(s), e.g. {missing[:3]}; "
                         "pass original= a model built with the same backbone and methods")
    params = dict(model.named_parameters())
    for name in trained:
        source = state[name].to(params[name].device, params[name].dtype)
        if source.shape != params[name].shape:
            raise ValueError(f"original {name} has shape {tuple(source.shape)}, the model {tuple(params[name].shape)}")
        params[name].copy_(torch.lerp(source, params[name], ratio))
    if isinstance(model.head, TextClassifier):
        model.head._cache = None
    return model


def iwo_loss(model, video: torch.Tensor, labels: torch.Tensor, original_fraction: tuple[float, float] = (0.0, 0.6),
             weight: float = 0.5, original=None, rng: Optional[random.Random] = None, loss_fn=F.cross_entropy):
    """The interpolated-weight regulariser: ``weight * loss(model at a*theta_0 + (1-a)*theta)``, ``a`` drawn
    uniformly from ``original_fraction`` (the official 0.0-0.6, loss ratio 0.5).

    As in the official loop, its gradient with respect to the interpolated weights is what reaches the
    trained weights (not scaled by ``1 - a``): the interpolated tensors are passed straight through.
    Add it to the plain loss before ``backward``. Runs a second forward (twice the activations).
    """
    low, high = original_fraction
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"original_fraction must satisfy 0 <= low <= high <= 1, got {original_fraction}")
    a = (rng or random).uniform(low, high)
    state = _original_state(model, original)
    params = {}
    for name, p in model.named_parameters():
        if p.requires_grad and name in state:
            mixed = torch.lerp(p.detach(), state[name].to(p.device, p.dtype), a)
            params[name] = mixed + (p - p.detach())   # value: the interpolation; gradient: straight to p
    logits = torch.func.functional_call(model, params, (video,), strict=False)
    return weight * loss_fn(logits, labels)


@register_method(
    NAME, OpenVCLIPConfig, family="post-pretraining", needs_text=True, claims=("readout", "attention"),
    paper="Weng, Yang, Li, Wu, Jiang. Open-VCLIP: Transforming CLIP to an Open-vocabulary Video Model via "
          "Interpolated Weight Optimization. ICML 2023",
    help="every frame also attends to frames t-1 and t+1 (no new parameters); CLIP fine-tuned, weights patched "
         "half-way back to CLIP for open-vocabulary use",
)
def apply_open_vclip(model, config: OpenVCLIPConfig) -> None:
    from .lora import check_attention_sees_lora

    backbone = model.backbone
    check_attention_sees_lora(model, NAME, range(backbone.depth))
    for index, (view, slot) in enumerate(zip(backbone.views, backbone.slots)):
        if view.qkv is None or view.attn_out is None:
            raise ValueError(f"open-vclip: block {index} of {backbone.name!r} offers no q/k/v handles "
                             f"({type(view.attn_module).__name__}); the expanded temporal view needs them")
        slot.add("attention", NAME, ExpandedTemporalAttention(backbone, index, config.ovc_ends))
    text = model.use_text()
    model.set_readout("embed-mean", project=True)
    model.set_aggregator(NormalizedFrameMean())
    if not isinstance(model.head, TextClassifier):
        model.set_text_classifier(OPEN_VCLIP_TEMPLATES, classifier_cls=FrameLogitClassifier)
    model.train_tower_parameters(backbone.tower)
    if config.train_text:
        unfreeze_text(text)
    train_clip_logit_scale(model, True)   # CLIP's temperature, unless a kept classifier has its own
    if config.keep_original_weights:
        model.open_vclip_original = OriginalWeights(
            {name: p for name, p in model.named_parameters() if p.requires_grad})
    if config.ovc_iwo_weight:
        model.extra_losses.append(functools.partial(iwo_loss, weight=config.ovc_iwo_weight))
