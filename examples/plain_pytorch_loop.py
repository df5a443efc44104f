"""An adaptvid model inside a plain PyTorch training loop (no adaptvid trainer).

The task is temporal on purpose: every video shows the same random texture
whose brightness either rises or falls over time. Both classes contain the
same set of frames, only their order differs, so a model must see time to
tell them apart (the "frozen" baseline, which averages frame embeddings,
cannot do better than chance).

    python examples/plain_pytorch_loop.py                      # tiny-clip + st-adapter
    python examples/plain_pytorch_loop.py --method frozen      # order-blind baseline: stays near ln 2
    python examples/plain_pytorch_loop.py --backbone tiny-vit --steps 80

Runs on a laptop CPU in well under a minute with the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import adaptvid

CLASS_NAMES = ["falling", "rising"]


def synthetic_batch(batch_size: int, frames: int, size: int, generator: torch.Generator):
    """Videos in [0, 1], shape (B, 3, T, H, W); label 1 if the brightness rises over time, 0 if it falls."""
    labels = torch.randint(0, 2, (batch_size,), generator=generator)
    texture = torch.rand(batch_size, 3, 1, size, size, generator=generator) * 0.5 + 0.25
    ramp = torch.linspace(-0.25, 0.25, frames)
    ramps = torch.where(labels[:, None] == 1, ramp, ramp.flip(0))            # (B, T)
    noise = 0.02 * torch.randn(batch_size, 3, frames, size, size, generator=generator)
    video = (texture + ramps[:, None, :, None, None] + noise).clamp(0, 1)
    return video, labels


def normalise(video: torch.Tensor, model: adaptvid.VideoModel) -> torch.Tensor:
    """Apply the backbone's own input statistics, as its pretrained weights expect."""
    pre = model.backbone.preprocess
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1, 1)
    return (video - mean) / std


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tiny-clip", help="backbone name (default: tiny-clip)")
    parser.add_argument("--method", default="st-adapter", help="method name(s), comma-separated (default: st-adapter)")
    parser.add_argument("--bottleneck", type=int, default=32, help="st-adapter width (default: 32)")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps (default: 60)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--log-every", type=int, default=10, help="print the mean loss every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help=(
        "CPU threads for torch (default: 1 for the tiny-* backbones, whose small ops only lose time "
        "to thread start-up and contention; torch's own default otherwise)"))
    parser.add_argument("--out", default=None, help="checkpoint folder (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    if args.threads or args.backbone.startswith("tiny-"):
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    # --bottleneck goes to whichever chosen method has that option (build_model rejects options no method has).
    names = [name.strip() for name in args.method.split(",") if name.strip()]
    takes_bottleneck = any("bottleneck" in {f.name for f in dataclasses.fields(adaptvid.get_method(name).config_cls)}
                           for name in names)
    options = {"bottleneck": args.bottleneck} if takes_bottleneck else {}
    model = adaptvid.build_model(args.backbone, args.method, num_classes=len(CLASS_NAMES),
                                 num_frames=args.frames, **options)
    trainable, total = adaptvid.count_parameters(model)
    print(f"{args.backbone} + {args.method}: {trainable:,} trainable of {total:,} parameters")

    size = model.backbone.preprocess.image_size
    data = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)

    start = time.perf_counter()
    model.train()
    window = []
    for step in range(1, args.steps + 1):
        video, labels = synthetic_batch(args.batch_size, args.frames, size, data)
        loss = F.cross_entropy(model(normalise(video, model)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        # The first step is printed alone (the starting loss), then the mean of each window.
        if step == 1 or step % args.log_every == 0 or step == args.steps:
            print(f"step {step:4d}/{args.steps}  loss {sum(window) / len(window):.4f}", flush=True)
            last_mean, window = sum(window) / len(window), []
    print(f"final loss {last_mean:.4f}  ({time.perf_counter() - start:.1f} s)")

    # Evaluate on fresh videos, then show the checkpoint round trip.
    model.eval()
    video, labels = synthetic_batch(64, args.frames, size, torch.Generator().manual_seed(args.seed + 1))
    video = normalise(video, model)
    with torch.no_grad():
        logits = model(video)
    print(f"accuracy on 64 new videos: {(logits.argmax(-1) == labels).float().mean().item():.2f}")

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "checkpoint"
        model.save_adapter(out, class_names=CLASS_NAMES)
        files = ", ".join(f"{p.name} ({p.stat().st_size:,} B)" for p in sorted(out.iterdir()))
        print(f"saved to {out}: {files}")
        loaded = adaptvid.load_model(out).eval()
        with torch.no_grad():
            same = torch.equal(loaded(video), logits)
    print(f"reloaded: classes {loaded.class_names}, identical outputs: {same}")
    if not same:
        raise SystemExit("the reloaded model gives different outputs")


if __name__ == "__main__":
    main()
