"""Symmetric InfoNCE over text-video pairs, with the embeddings all-gathered across processes so that each
process's loss sees the global batch.

Gradient scaling under DDP (proved by tests/test_contrastive.py with two real processes):

Let W processes each hold B_r pairs, x_r their embeddings, L the symmetric InfoNCE of the concatenated
batch (a mean over all sum(B_r) pairs) and theta the encoder parameters (replicated, x_r = f(theta, data_r)).
A single process on the concatenated batch gets dL/dtheta = sum_r dL/dx_r . dx_r/dtheta.

``gather_with_grad`` all-gathers in the forward and, in the backward, *sums* the gathered tensor's
gradient over processes (all-reduce SUM) before handing each process its own slice. Every process
computes the same global L, so its gradient with respect to the gathered tensor is dL/dX on each process,
and the sum gives W . dL/dx_r on process r. Process r therefore back-propagates W . dL/dx_r . dx_r/dtheta,
and DDP's gradient *mean* (all-reduce, divide by W) yields sum_r dL/dx_r . dx_r/dtheta = dL/dtheta. The
logit scale sits outside the gather: every process gets the full dL/d(logit_scale), and DDP's mean keeps
it. So **the loss is returned unscaled (the global-batch mean) and no world-size factor is applied
anywhere**: the DDP-mean gradients of every parameter equal the single-process gradients of the
concatenated batch. (The gradient a process sees on its own activations, e.g. in a hook, is W times the
single-process one; parameter gradients are what DDP averages.)

The other option, gathering without gradient and putting the local tensor back in its slot, gives process
r only dL/dx_r . dx_r/dtheta, so DDP's mean is dL/dtheta / W for the encoders, while the logit scale still
gets the full dL/d(logit_scale): multiplying the loss by W would fix the encoders but make the logit
scale's gradient W times too large. No single loss factor makes it exact, which is why the all-reduce
version is used here.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)   # CLIP clamps its temperature at 100


def _distributed_world(group=None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (sizes may differ per process); backward: all-reduce (sum) of the gathered
    gradient, then this process's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        sizes = [int(s.item()) for s in sizes]
        largest = max(sizes)
        padded = tensor.contiguous()
        if tensor.shape[0] < largest:   # all_gather needs equal shapes: pad, gather, strip
            pad = tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))
            padded = torch.cat([padded, pad])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start:ctx.stop], None


def gather_with_grad(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0 (rank order), differentiable: the backward
    sums the gathered gradient over processes and returns this process's slice, so DDP-averaged parameter
    gradients of a global-batch loss equal one process's on the concatenated batch (module docstring).
    Identity when torch.distributed is not initialised or the world has one process."""
    if _distributed_world(group) == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, group)


def symmetric_infonce(text_emb: torch.Tensor, video_emb: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's symmetric contrastive loss: pair i (text i, video i) is the positive of row and column i.

    ``logits = exp(min(logit_scale, log 100)) * normalize(text) @ normalize(video).T``; the loss is the mean
    of the text->video cross-entropy (rows) and the video->text one (columns), each a mean over pairs.
    ``logit_scale`` is the *log* of the inverse temperature, as CLIP stores it (``log(1 / 0.07)`` at init),
    a tensor (learnable) or a float; the clamp at log(100) mirrors CLIP's (its gradient is zero above it).
    Computed in float32 whatever the embeddings' dtype.
    """
    if text_emb.shape[0] != video_emb.shape[0]:
        raise ValueError(f"symmetric InfoNCE pairs text i with video i: {text_emb.shape[0]} texts, "
                         f"{video_emb.shape[0]} videos")
    if not isinstance(logit_scale, torch.Tensor):
        logit_scale = torch.tensor(float(logit_scale), device=text_emb.device)
    with torch.autocast(device_type=text_emb.device.type, enabled=False):   # float32 even under autocast
        scale = logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
        text = F.normalize(text_emb.float(), dim=-1)
        video = F.normalize(video_emb.float(), dim=-1)
        logits = scale * text @ video.t()
        targets = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def contrastive_loss(text_emb: torch.Tensor, video_emb: torch.Tensor, logit_scale, gather: bool = True,
                     group=None) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch: with ``gather`` (and torch.distributed running), both
    embeddings are all-gathered with ``gather_with_grad`` first, so every process computes the same loss,
    the mean over all processes' pairs, with every other process's pairs as negatives. Return it as is
    to a DDP backward: the averaged gradients are those of one process on the whole batch (module
    docstring). Without ``gather`` (or one process) it is ``symmetric_infonce`` of the local batch."""
    if gather:
        text_emb = gather_with_grad(text_emb, group)
        video_emb = gather_with_grad(video_emb, group)
    return symmetric_infonce(text_emb, video_emb, logit_scale)
