"""Side-by-side speed and memory of methods on one backbone and one clip.

For each method: inference time and training-step time as multiples of the
bare backbone's inference forward, clips/s, and the activation memory of one
training step against full fine-tuning (``adaptvid.model.profile``). With
``--peak-tflops``, model-FLOPs utilisation from the counted FLOPs.

    python benchmarks/bench_methods.py --backbone tiny-clip            # seconds, CPU
    python benchmarks/bench_methods.py --device cuda --precision bf16 --peak-tflops 989
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random or local weights only: never wait on a hub

import torch  # noqa: E402

from torch.utils.flop_counter import FlopCounterMode, conv_flop_count  # noqa: E402

from adaptvid import build_model, get_method, merge  # noqa: E402
from adaptvid.model.profile import bare_backbone, countable_attention, profile_model  # noqa: E402
from adaptvid.runner.recipes import parse_value  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="clip", help="backbone name (default clip, i.e. CLIP ViT-B/16)")
    p.add_argument("--weights", default="random", help="'random' (default: nothing downloaded) or a local file")
    p.add_argument("--methods", default="frozen,full,st-adapter",
                   help="comma-separated method names; NAME+merged for a mergeable method folded into the weights")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. bottleneck=16; given to each method that has it (repeatable)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=2, help="clips per step")
    p.add_argument("--num-classes", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3, help="timed iterations; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (allocator, kernel choice)")
    p.add_argument("--precision", choices=["no", "bf16"], default="no", help="autocast to bf16 or not")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s at this precision, for MFU")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)  # kernels are asynchronous on GPU: wait for them before reading the clock
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_step(model, clip, precision):
    def step():
        with torch.no_grad(), _autocast(clip.device, precision):
            # The bare reference of a decoder / video-encoder method has no head (it was sized for them).
            model(clip) if model.head is not None else model.encode_video(clip)
    return step


def training_step(model, clip, labels, precision):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)

    def step():
        with _autocast(clip.device, precision):
            loss = torch.nn.functional.cross_entropy(model(clip), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    # torch's own formula ignores groups in the weight-gradient term, which counts a depthwise conv's
    # backward (ST-Adapter's) `groups` times too high; that term costs what the forward conv costs.
    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


def training_flops(model, clip, labels) -> int:
    """FLOPs of forward + backward of one step, counted (not estimated as 3x forward: frozen weights skip their grads)."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    with countable_attention(), counter:
        torch.nn.functional.cross_entropy(model(clip), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def options_for(method: str, options: dict) -> dict:
    """The options that belong to ``method`` (frozen has none, so bottleneck=16 must skip it)."""
    fields = {f.name for f in dataclasses.fields(get_method(method).config_cls)}
    return {key: parse_value(value) for key, value in options.items() if key in fields}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    options = dict(option.split("=", 1) for option in args.option)
    rows = []
    for method in methods:
        # "zeroi2v+merged": the method folded into the frozen weights (adaptvid.merge), as deployed.
        name, merged = method.removesuffix("+merged"), method.endswith("+merged")
        # Text-classifying methods need class names; placeholders cost what real names of similar length would.
        names = [f"class {i}" for i in range(args.num_classes)] if get_method(name).needs_text else None
        model = build_model(args.backbone, name, args.num_classes, class_names=names, weights=args.weights,
                            num_frames=args.frames, **options_for(name, options)).to(device)
        if merged:
            merge(model)
        size = model.backbone.preprocess.image_size
        clip = torch.randn(args.batch, 3, args.frames, size, size, device=device)
        labels = torch.zeros(args.batch, dtype=torch.long, device=device)
        # The reference, timed again next to each method so that drifting load on a shared machine
        # moves both: the same model with its method modules taken out, inference only.
        model.eval()
        with bare_backbone(model):
            bare_s = median_seconds(inference_step(model, clip, args.precision), device, args.repeats, args.warmup)
        infer_s = median_seconds(inference_step(model, clip, args.precision), device, args.repeats, args.warmup)
        model.train()
        train_s = median_seconds(training_step(model, clip, labels, args.precision), device, args.repeats, args.warmup)
        profile = profile_model(model, num_frames=args.frames, batch=args.batch)
        row = dict(method=method, trainable=profile["trainable_excl_head"], gflops=profile["gflops_per_view"],
                   bare_s=bare_s, infer_s=infer_s, train_s=train_s, act_ratio=profile["activation_ratio"])
        if args.peak_tflops:
            row["mfu_infer"] = profile["gflops_per_view"] * 1e9 * args.batch / infer_s / (args.peak_tflops * 1e12)
            row["mfu_train"] = training_flops(model, clip, labels) / train_s / (args.peak_tflops * 1e12)
        rows.append(row)
        del model
    print_table(args, rows)
    return 0


def print_table(args, rows) -> None:
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {args.backbone} ({args.weights}), {args.batch} x {args.frames} frames, precision {args.precision}, "
          f"{where}, median of {args.repeats}")
    mfu = "mfu_infer" in rows[0]
    head = ["method", "trainable excl. head", "GFLOPs/clip", "bare ms", "infer ms", "infer / bare", "train ms", "train / bare",
            "infer clips/s", "train clips/s", "activations / full"] + (["MFU infer", "MFU train"] if mfu else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        bare_s = r["bare_s"]
        cells = [r["method"], f"{r['trainable']:,}", f"{r['gflops']:.4g}", f"{1000 * bare_s:.1f}", f"{1000 * r['infer_s']:.1f}",
                 f"{r['infer_s'] / bare_s:.2f}", f"{1000 * r['train_s']:.1f}", f"{r['train_s'] / bare_s:.2f}",
                 f"{args.batch / r['infer_s']:.2f}", f"{args.batch / r['train_s']:.2f}", f"{r['act_ratio']:.3f}"]
        if mfu:
            cells += [f"{100 * r['mfu_infer']:.1f}%", f"{100 * r['mfu_train']:.1f}%"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
