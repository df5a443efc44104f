"""Readout bookkeeping the methods share, so that composed methods settle on one readout.

Two things depend on more than one method of a composition:

* **The pooling a method prefers.** ST-Adapter's readout is ``token-mean``; AIM's, ZeroI2V's and every
  method that reads per-frame embeddings (a temporal aggregator, a text classifier over the mean of
  frame embeddings) use ``embed-mean``. :func:`request_readout` records a method's preference and applies
  the rule *embed-mean wins*: ``token-mean`` is used only when no chosen method asked for the per-frame
  readout, and a model whose readout is owned by an aggregator, decoder or video encoder keeps it.
* **Which head-only tower parameters are used.** A method may unfreeze the tower's final norm and
  projection (``full``, AIM's final norm, ...) while another chooses a readout that skips them (no
  projection, or a decoder that never calls ``backbone.head``); trained, they would get no gradient and
  be saved as dead weights. :func:`settle_head` freezes the head-only parameters the readout does not
  use and gives back, when a later method makes the readout use them again, the ones it froze.

Methods call :func:`settle_head` after they change the readout or unfreeze tower parameters; the
registry applies methods in a canonical order (``registry.STAGES``), so the last call sees the final
readout.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

logger = logging.getLogger("adaptvid")

_REQUESTS = "_readout_requests"         # model attribute: {method: pool} as requested
_FROZEN = "_head_parameters_frozen"     # model attribute: tower names of the head-only parameters settle_head froze


def readout_requests(model) -> dict[str, str]:
    """The pooling each applied method asked for (``request_readout`` / ``record_readout``)."""
    requests = getattr(model, _REQUESTS, None)
    if requests is None:
        requests = {}
        setattr(model, _REQUESTS, requests)
    return requests


def record_readout(model, method: str, pool: str) -> None:
    """Note that ``method`` reads ``pool`` (for a method that sets its readout itself)."""
    readout_requests(model)[method] = pool


def readout_owner(model) -> Optional[str]:
    """What owns the readout, in words, or None: a temporal aggregator, a decoder or a video encoder."""
    for attribute, what in (("video_encoder", "video encoder"), ("decoder", "decoder"),
                            ("aggregator", "temporal aggregator over frame embeddings")):
        module = getattr(model, attribute, None)
        if module is not None:
            return f"{type(module).__name__} ({what})"
    return None


def request_readout(model, method: str, pool: str, project: bool) -> None:
    """``method``'s paper readout, as a preference the other chosen methods may overrule.

    Kept instead (with a log note): a readout owned by an aggregator, decoder or video encoder (it was
    built for the readout it has); ``embed-mean`` when ``token-mean`` is asked for and another method
    reads per-frame embeddings. The projection follows the request unless the classifier compares in
    CLIP's joint space (``VideoModel.set_readout`` keeps it on for a text classifier).
    """
    requests = readout_requests(model)
    requests[method] = pool
    owner = readout_owner(model)
    if owner is not None:
        logger.info("%s: keeping the readout %s (project=%s) that %s was built for, instead of %s (project=%s)",
                    method, model.pool, model.project, owner, pool, project)
        settle_head(model)
        return
    if pool == "token-mean":
        per_frame = sorted(name for name, wanted in requests.items() if wanted == "embed-mean" and name != method)
        if per_frame:
            logger.info("%s: keeping the per-frame readout (embed-mean) that %s read(s), instead of its own "
                        "token-mean", method, ", ".join(per_frame))
            pool = "embed-mean"
    if (pool, project) != (model.pool, model.project):
        model.set_readout(pool, project)
    settle_head(model)


def _head_parameters(backbone, project: bool) -> dict[str, torch.nn.Parameter]:
    """The tower parameters ``backbone.head(cls, project)`` uses (final norm, and projection), by name,
    found by autograd."""
    named = list(backbone.tower.named_parameters())
    if not named:
        return {}
    flags = [p.requires_grad for _, p in named]
    try:
        for _, p in named:
            p.requires_grad_(True)
        first = named[0][1]
        probe = torch.ones(1, backbone.width, dtype=first.dtype, device=first.device)
        with torch.enable_grad():
            out = backbone.head(probe, project=project)
            grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True)
    finally:
        for (_, p), flag in zip(named, flags):
            p.requires_grad_(flag)
    return {name: p for (name, p), g in zip(named, grads) if g is not None}


_UNKNOWN = object()


def head_use(model):
    """How the readout uses ``backbone.head``: True / False (with / without the projection), None (not at
    all), or ``_UNKNOWN`` for a decoder or video encoder that does not say (its ``head_projection``)."""
    module = model.video_encoder if model.video_encoder is not None else model.decoder
    if module is None:
        return bool(model.project)
    return getattr(module, "head_projection", _UNKNOWN)


def settle_head(model) -> None:
    """Freeze trainable head-only tower parameters the readout does not use; unfreeze the ones this
    froze earlier once the readout uses them again. A decoder or video encoder that does not declare
    ``head_projection`` leaves everything as it is."""
    use = head_use(model)
    if use is _UNKNOWN:
        return
    backbone = model.backbone
    candidates = _head_parameters(backbone, project=True)
    used = set(_head_parameters(backbone, project=use)) if use is not None else set()
    frozen = getattr(model, _FROZEN, None)
    if frozen is None:
        frozen = set()
        setattr(model, _FROZEN, frozen)
    for name, p in candidates.items():
        if name in used:
            if name in frozen:
                p.requires_grad_(True)
                frozen.discard(name)
        elif p.requires_grad:
            p.requires_grad_(False)
            frozen.add(name)
