"""What a method costs: parameters, FLOPs per view, and activation memory of one training step.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs
per multiply-add). Attention must be forced onto kernels the counter sees:
fused SDPA kernels and the ``nn.MultiheadAttention`` fast path count as zero,
so counting runs with SDPA on its math backend and the fast path disabled.

Baselines are measured on the same model object, not rebuilt, so nothing but
the method differs: the bare tower is the model with its slots emptied, and
full fine-tuning is the model with every tower weight set trainable.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Optional

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..backbones.base import HOOK_POINTS
from ..methods.registry import get_method, split_method_names
from ..text import TextClassifier
from .video_model import VideoModel, build_model, count_parameters

COUNTER = "torch FlopCounterMode, 2 FLOPs per MAC, attention counted"


@contextlib.contextmanager
def bare_backbone(model: VideoModel):
    """Temporarily take every method module out of the backbone's slots (and after_embed).

    An emptied slot makes ``run_block`` call the library's own block, so this is
    exactly the unmodified tower; the pooled readout and head stay as the method
    set them, so a method that only changes the readout costs exactly the bare tower.
    A video decoder (``model.decoder``, EVL-style) or video encoder (DualPath, DiST)
    is a method module too: it is taken out with the head sized for it, leaving the
    pooled readout. Layers that peft injected into the tower itself (LoRA) are
    switched to their base layer.
    """
    backbone = model.backbone
    stash = [{p: getattr(slot, p) for p in HOOK_POINTS} for slot in backbone.slots]
    after_embed, before_pre_norm = backbone.after_embed, backbone.before_pre_norm
    decoder, encoder, head = model.decoder, model.video_encoder, model.head
    aggregator = model.aggregator   # a temporal head over frame embeddings (set_aggregator) is a method module too
    try:
        for slot in backbone.slots:
            for point in HOOK_POINTS:
                setattr(slot, point, nn.ModuleDict())
        backbone.after_embed, backbone.before_pre_norm = nn.ModuleDict(), nn.ModuleDict()
        if decoder is not None or encoder is not None:
            model.decoder, model.video_encoder, model.head = None, None, None
        model.aggregator = None       # the plain mean over frame embeddings
        with _peft_layers_disabled(backbone.tower):
            yield model
    finally:
        for slot, saved in zip(backbone.slots, stash):
            for point, modules in saved.items():
                setattr(slot, point, modules)
        backbone.after_embed, backbone.before_pre_norm = after_embed, before_pre_norm
        model.decoder, model.video_encoder, model.head = decoder, encoder, head
        model.aggregator = aggregator


@contextlib.contextmanager
def _peft_layers_disabled(tower: nn.Module):
    """Run peft-wrapped layers (LoRA) as their base layer; merged ones already cost only the base layer."""
    if "peft" not in sys.modules:  # nothing can be wrapped, and importing peft takes seconds
        yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    # The flag itself, not enable_adapters(): that would also flip requires_grad, and on a merged
    # layer peft's forward would unmerge (rewrite the weights), so merged layers are left alone.
    layers = [m for m in tower.modules() if isinstance(m, BaseTunerLayer) and not m.merged]
    before = [m._disable_adapters for m in layers]
    try:
        for m in layers:
            m._disable_adapters = True
        yield
    finally:
        for m, flag in zip(layers, before):
            m._disable_adapters = flag


@contextlib.contextmanager
def full_finetuning(model: VideoModel):
    """Temporarily make every tower weight trainable, as full fine-tuning would."""
    params = list(model.backbone.tower.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield model
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _training_mode(model: nn.Module, train: bool):
    was = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def countable_attention():
    """SDPA on its math backend and no MHA fast path: both are otherwise invisible to the counter."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _run(model: VideoModel, video: torch.Tensor) -> torch.Tensor:
    return model(video) if model.head is not None else model.encode_video(video)


def count_flops(model: VideoModel, video: torch.Tensor) -> int:
    """Forward FLOPs of ``model`` on ``video`` in eval mode, without autograd."""
    counter = FlopCounterMode(display=False)
    with _training_mode(model, False), torch.no_grad(), countable_attention(), counter:
        _run(model, video)
    return counter.get_total_flops()


def saved_activation_bytes(model: VideoModel, video: torch.Tensor) -> int:
    """Bytes autograd keeps for backward during one training forward + loss.

    Each storage is counted once (many saved tensors are views of one buffer).
    Model state (parameters, buffers) and the input clip are left out: they
    exist whether or not anything is trained.
    """
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    state.add(video.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter):
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in state:
                seen[key] = storage.nbytes()
        return t

    with _training_mode(model, True), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = _run(model, video)
        if model.head is not None:
            labels = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
            loss = nn.functional.cross_entropy(out, labels)
        else:
            loss = out.float().pow(2).mean()
        # The graph (through ``loss``) keeps every saved storage alive, so data_ptr keys stay unique until here.
        total = sum(seen.values())
        del loss, out
    return total


def profile_model(model: VideoModel, num_frames: Optional[int] = None, views: tuple[int, int] = (1, 1),
                  batch: int = 1) -> dict:
    """Parameters, FLOPs (per view and over ``views=(clips, crops)``) and activation memory of ``model``.

    FLOPs are for one clip ``(1, 3, T, S, S)``; activation memory for one
    training step on ``batch`` clips. Ratios compare with the same model's bare
    tower (FLOPs) and with full fine-tuning of it (activation memory). On the
    meta device the activation entries are None.
    """
    clips, crops = views
    if clips < 1 or crops < 1:
        raise ValueError(f"views must be (clips, crops) with both >= 1, got {views!r}")
    frames = num_frames or model.num_frames
    size = model.backbone.preprocess.image_size
    param = next(model.parameters())
    clip = torch.randn(1, 3, frames, size, size, device=param.device, dtype=param.dtype)
    trainable, total = count_parameters(model)
    # "Excl. head" leaves out a linear classifier; a text classifier has no class weights, and what it
    # holds (a prompt learner, X-CLIP's prompt generator) are method modules, counted as such.
    head_trainable = count_parameters(model.head)[0] if isinstance(model.head, nn.Linear) else 0

    if isinstance(model.head, TextClassifier):
        with torch.no_grad():   # the class texts are encoded once and cached, as at inference
            model.head.class_embeddings()
    flops = count_flops(model, clip)
    # The reference is the image model on the clip's frames; a video encoder that feeds the tower
    # fewer frames than the clip holds (DiST's sparse frames, DualPath's spatial path) says how many.
    reference = getattr(model.video_encoder, "reference_frames", None) or frames
    with bare_backbone(model):
        bare = count_flops(model, clip[:, :, :reference])

    # A model moved to the meta device (model.to("meta")) is counted without computing anything,
    # which is how big towers are profiled in a second; meta tensors hold no memory to measure.
    activation = activation_full = None
    if clip.device.type != "meta":
        step_clip = clip.expand(batch, -1, -1, -1, -1).clone()
        activation = saved_activation_bytes(model, step_clip)
        with full_finetuning(model):
            activation_full = saved_activation_bytes(model, step_clip)
    ratio = activation / activation_full if activation_full else None

    per_view = flops / 1e9
    return {
        "backbone": model.backbone.name,
        "methods": [name for name, _ in model.methods],
        "frames": frames,
        "views": f"{clips}x{crops}",
        "batch": batch,
        "trainable": trainable,
        "total": total,
        "trainable_excl_head": trainable - head_trainable,
        "gflops_per_view": per_view,
        "gflops_total": per_view * clips * crops,
        "gflops_bare_per_view": bare / 1e9,
        "bare_frames": reference,
        "flops_ratio": flops / bare,
        "activation_bytes": activation,
        "activation_bytes_full": activation_full,
        "activation_ratio": ratio,
        "counter": COUNTER,
    }


def format_profile(result: dict) -> str:
    """A readable table of ``profile_model``'s result."""
    mib = 2 ** 20
    rows = [
        ("backbone", result["backbone"]),
        ("methods", ",".join(result["methods"])),
        ("frames x views", f"{result['frames']} x {result['views']}"),
        ("trainable parameters", f"{result['trainable']:,} ({result['trainable_excl_head']:,} excl. head)"),
        ("total parameters", f"{result['total']:,}"),
        ("GFLOPs per view", f"{result['gflops_per_view']:.6g}"),
        ("GFLOPs total", f"{result['gflops_total']:.6g} ({result['views']} views)"),
        ("GFLOPs bare tower", f"{result['gflops_bare_per_view']:.6g} per view"),
        ("FLOPs ratio", f"{result['flops_ratio']:.4f} x bare tower"),
    ]
    if result["activation_bytes"] is not None:
        rows += [
            ("activations saved", f"{result['activation_bytes'] / mib:.1f} MiB for {result['batch']} clip(s)"),
            ("  full fine-tuning", f"{result['activation_bytes_full'] / mib:.1f} MiB"),
            ("activation ratio", f"{result['activation_ratio']:.4f} x full fine-tuning"),
        ]
    rows.append(("counter", result["counter"]))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def profile_method(backbone: str, method: str, num_classes: int = 400, *, weights: Optional[str] = None,
                   num_frames: int = 8, views: tuple[int, int] = (1, 1), batch: int = 1, **options) -> dict:
    """Build ``backbone`` + ``method`` (text-classifying methods get placeholder class names, which cost
    what real names of similar length would) and ``profile_model`` it: what ``adaptvid profile`` prints."""
    needs_text = any(get_method(name).needs_text for name in split_method_names(method))
    names = [f"class {i}" for i in range(num_classes)] if needs_text else None
    model = build_model(backbone, method, num_classes, class_names=names, weights=weights, num_frames=num_frames,
                        **options)
    return profile_model(model, num_frames=num_frames, views=views, batch=batch)
