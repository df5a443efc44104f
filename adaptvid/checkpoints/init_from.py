"""Start a model from the towers of another checkpoint (ViFi-CLIP's "bridge and prompt").

ViFi-CLIP (Rasheed et al., CVPR 2023) adapts to low-data sets in two stages: first fine-tune
both CLIP towers on Kinetics-400 (the bridge: ``adaptvid adapt --method vifi-clip``), then
freeze them and learn deep vision and language prompts on the target set (``--method
coop,vpt``). The second stage is built on the base CLIP weights as usual, and
:func:`init_from` then overwrites its (frozen) image- and text-tower tensors with the
first stage's: every ``backbone.tower.*`` and ``text.*`` tensor of the checkpoint is copied
into the model parameter of exactly that name. Anything else in the checkpoint (a linear
head, another method's modules) is skipped and counted.

A model initialised this way records the checkpoint folder (``model.init_from_path``); its own
checkpoint stores it and ``load_model`` repeats the initialisation before loading the
second stage's tensors, so that folder must stay where it is.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from .adapter import WEIGHTS_FILE, read_config

logger = logging.getLogger("adaptvid")
PREFIXES = ("backbone.tower.", "text.")   # the library modules: the image tower and the CLIP text tower


def init_from(model, checkpoint_dir) -> dict:
    """Copy the tower and text tensors of the checkpoint in ``checkpoint_dir`` into ``model``, in place.

    Names must match exactly; a shape mismatch, or a checkpoint with no tower/text tensor the model
    has, is an error. Returns ``{"loaded": n, "skipped": [names], "loaded_names": [...]}`` and logs the counts.
    """
    directory = Path(checkpoint_dir).expanduser().resolve()
    config = read_config(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the checkpoint has a config but no {WEIGHTS_FILE}")
    tensors = load_file(str(path))
    if config.get("backbone") != model.backbone.name:
        raise ValueError(f"{directory} was trained on backbone {config.get('backbone')!r}, this model is "
                         f"{model.backbone.name!r}: build the model with --backbone {config.get('backbone')}")
    params = dict(model.named_parameters())
    # A model without the text tower (a linear head) has no use for the checkpoint's text tensors: skipped.
    prefixes = PREFIXES if getattr(model, "text", None) is not None else ("backbone.tower.",)
    wanted = {name: t for name, t in tensors.items() if name.startswith(prefixes)}
    skipped = sorted(set(tensors) - set(wanted))
    unknown = sorted(name for name in wanted if name not in params)
    if unknown:
        raise ValueError(f"{directory}: {len(unknown)} tower/text tensor(s) have no counterpart in this model, "
                         f"e.g. {unknown[:3]}; was it trained on another backbone library or version?")
    if not wanted:
        raise ValueError(f"{directory}: the checkpoint holds no tower or text tensor (only {sorted(tensors)[:3]}...); "
                         "--init-from needs a checkpoint that fine-tuned the towers, e.g. one of vifi-clip or full")
    wrong = [f"{name} {tuple(t.shape)} != {tuple(params[name].shape)}" for name, t in wanted.items()
             if t.shape != params[name].shape]
    if wrong:
        raise ValueError(f"{directory}: shapes differ from this model's: {wrong[:3]}")
    with torch.no_grad():
        for name, tensor in wanted.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    if hasattr(model.head, "_cache"):
        model.head._cache = None   # class embeddings of the old text tower must not be reused
    if config.get("weights") != getattr(model, "weights", None):
        logger.warning("%s was trained on weights %r, this model starts from %r: tensors the checkpoint does not "
                       "hold (those its methods left frozen) come from the latter", directory, config.get("weights"),
                       getattr(model, "weights", None))
    model.init_from_path = str(directory)
    logger.info("init-from %s: loaded %d tower/text tensors (%d parameters), skipped %d other tensors %s",
                directory, len(wanted), sum(t.numel() for t in wanted.values()), len(skipped), skipped[:5])
    return {"loaded": len(wanted), "skipped": skipped, "loaded_names": sorted(wanted)}
