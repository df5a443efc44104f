"""A cheap fingerprint of the frozen tensors a checkpoint is trained on top of.

An adapter checkpoint holds only what was trained; ``load_model`` and ``adaptvid adapt --resume``
rebuild the rest (the library towers) from the recorded weights. If those weights are not the ones
the adapter was trained on (``--weights random`` on a tiny-clip run, another hub revision, a
different local file), the adapter runs on other frozen features and its accuracy is meaningless.
``adaptvid.json`` therefore records ``frozen_fingerprint``, and the loaders compare it.

What it covers: every ``state_dict`` tensor (parameters and persistent buffers) of the library
towers (``backbone.tower.*`` and an attached CLIP text tower ``text.*``) that the checkpoint does
NOT hold, i.e. exactly the tensors that are rebuilt instead of loaded, as they are just before the
checkpoint's own tensors are loaded:

- plain adapters: the whole frozen tower (and text tower, when attached);
- methods that train part of a tower (``full``, ``vifi-clip``, a trained final norm): the tower
  tensors they left frozen only (the trained ones are in the checkpoint and overwrite whatever was
  rebuilt);
- merged checkpoints (``adaptvid merge``): they hold the whole image tower, so it is not covered (any
  base weights give the same merged model); an attached text tower and the tower's buffers still are;
- ``init_from`` models: the frozen tensors after the other checkpoint's towers were copied in, so the
  fingerprint also changes when that checkpoint folder changed since (``load_model`` repeats the copy).

How: SHA-256 over, for each covered tensor in name order, its name, dtype and shape and the raw bytes
of a fixed sample of its values (``VALUES_PER_TENSOR`` elements at deterministic positions spread
over the flattened tensor; all of them for smaller tensors). Bit patterns, not sums, so it does not
depend on the device or the summation order. Cost: one small gather per tensor, independent of the
tensor sizes. Measured on CPU (one thread, 2-core machine): tiny-clip's tower 32 tensors, 2,048 values,
1.4 ms; CLIP ViT-B/16's image tower (``create_backbone("clip", weights="random")``) 152 tensors,
9,728 values, 9-14 ms — a full SHA-256 of its 86M values takes 0.47 s there; with the CLIP text tower
attached (``coop``) 302 tensors, 21 ms. On a GPU each tensor adds one tiny device-to-host copy.
It cannot see a change confined to unsampled elements; fine-tuning or re-initialising a tower changes
nearly all of them.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Iterable, Optional

import torch

logger = logging.getLogger("adaptvid")

SCHEME = "adaptvid-sampled-sha256-v1"
VALUES_PER_TENSOR = 64
TOWER_PREFIXES = ("backbone.tower.", "text.")


class FingerprintMismatchError(ValueError):
    """The frozen backbone tensors differ from those a checkpoint was trained on."""


def _sample_positions(numel: int, k: int = VALUES_PER_TENSOR) -> list[int]:
    """``k`` distinct flat positions in ``[0, numel)``, fixed for a given size: one in each of ``k`` equal
    stretches, at a position inside the stretch that varies from stretch to stretch (not always its start,
    which for weight matrices would be one column)."""
    if numel <= k:
        return list(range(numel))
    stretch = numel // k
    return [j * stretch + (j * 2654435761 + 97) % stretch for j in range(k)]


def covered_tensors(model, held: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tower/text tensors of ``model`` (by ``state_dict`` name) that are not in ``held``."""
    held = set(held)
    return {name: t for name, t in model.state_dict(keep_vars=True).items()
            if isinstance(t, torch.Tensor) and name.startswith(TOWER_PREFIXES) and name not in held}


def frozen_fingerprint(model, held: Iterable[str]) -> Optional[dict]:
    """The fingerprint of ``model``'s frozen tower tensors that a checkpoint does not hold (``held``: the
    names it holds, ``saved_tensors(model)``). None for a model on the meta device."""
    tensors = covered_tensors(model, held)
    digest = hashlib.sha256(SCHEME.encode())
    values = 0
    with torch.no_grad():
        for name in sorted(tensors):
            t = tensors[name].detach()
            if t.is_meta:
                return None
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            if t.numel() == 0:
                continue
            flat = t.reshape(-1)
            positions = _sample_positions(flat.numel())
            sample = flat[torch.tensor(positions, device=flat.device)].cpu().contiguous()
            digest.update(sample.view(torch.uint8).numpy().tobytes())
            values += len(positions)
    return {"scheme": SCHEME, "sha256": digest.hexdigest(), "tensors": len(tensors), "values": values}


def _short(fingerprint: Optional[dict]) -> str:
    if not fingerprint:
        return "none recorded"
    return f"{fingerprint['sha256'][:12]} over {fingerprint.get('tensors', '?')} tensors"


def weights_label(weights) -> str:
    return "weights=None (the backbone's default)" if weights is None else f"weights={str(weights)!r}"


def check_fingerprint(recorded: Optional[dict], model, held: Iterable[str], *, where: str, trained_weights,
                      now_weights, allow_other_weights: bool = False, init_from: Optional[str] = None) -> bool:
    """Compare a checkpoint's recorded fingerprint with ``model``'s (rebuilt, before loading the
    checkpoint's tensors; ``held``: the tensor names the checkpoint holds). Returns True when they match.
    A checkpoint without one (written before fingerprints) is accepted with a warning; a mismatch raises
    :class:`FingerprintMismatchError` naming both weights and both fingerprints, or only warns with
    ``allow_other_weights``."""
    if not recorded:
        logger.warning("%s records no frozen-weights fingerprint (written by an older adaptvid): cannot check that "
                       "the frozen backbone tensors (%s) are the ones it was trained on (%s)",
                       where, weights_label(now_weights), weights_label(trained_weights))
        return False
    current = frozen_fingerprint(model, held)
    if current is None or recorded.get("scheme") != current["scheme"]:
        logger.warning("%s: its frozen-weights fingerprint (%s) cannot be compared here; not checked",
                       where, recorded.get("scheme"))
        return False
    if current["sha256"] == recorded.get("sha256"):
        return True
    hints = []
    if str(now_weights) == "random":
        hints.append("weights 'random' draws new random tensors on every build")
    if init_from:
        hints.append(f"its frozen towers also come from {init_from}, which may have changed since")
    message = (f"{where} was trained on the frozen backbone tensors of {weights_label(trained_weights)} (fingerprint "
               f"{_short(recorded)}), but the tower built from {weights_label(now_weights)} differs (fingerprint "
               f"{_short(current)}){': ' + '; '.join(hints) if hints else ''}. The trained tensors would run on other "
               "frozen features. Pass the weights it was trained on (--weights), or allow_other_weights=True "
               "(--allow-other-weights) to use it anyway.")
    if not allow_other_weights:
        raise FingerprintMismatchError(message)
    logger.warning("%s (allowed: allow_other_weights)", message.rsplit(" Pass the weights", 1)[0])
    return False


__all__ = ["FingerprintMismatchError", "VALUES_PER_TENSOR", "check_fingerprint", "covered_tensors",
           "frozen_fingerprint"]
