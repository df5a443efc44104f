"""Eager against ``torch.compile`` (what ``--compile`` does), side by side in one process.

Timing (default): for each method, the inference forward (eval, no autograd) and one training step
(forward, cross-entropy, backward, AdamW step) of the eager model and of ``torch.compile(model)``,
timed alternately (eager, compiled, eager, ...) so that drifting load moves both; the median of
``--repeats`` after ``--warmup`` untimed calls. The first compiled call of each kind is timed on its own
(the compile time, that one call included; inductor's on-disk caches make a second run's far shorter:
``--cold`` turns them off). The largest absolute difference between the compiled and the
eager outputs, and between their gradients after one backward, is printed next to the times (trainable
tensors are first moved off their initialisation, so a zero-initialised adapter hides nothing).

``--check-all``: every registered method on tiny-clip with aot_eager (or --backend) and fullgraph=False:
does the compiled forward (eval) and forward + backward (train) run, and do they equal eager to
``--tolerance``? Graphs captured and graph breaks are counted per method (a break splits the model into
several graphs; each break reason is listed once).

    python benchmarks/bench_compile.py                    # CLIP ViT-B/16, random weights, 1 x 8 frames, CPU
    python benchmarks/bench_compile.py --quick            # tiny-clip, seconds
    python benchmarks/bench_compile.py --check-all        # every method, aot_eager, tiny-clip
    python benchmarks/bench_compile.py --device cuda --batch 16 --repeats 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random or local weights only: never wait on a hub

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch._inductor.config  # noqa: E402
from torch._dynamo.backends.registry import lookup_backend  # noqa: E402

from adaptvid import build_model, get_method, list_methods  # noqa: E402

# Options that keep a method small on tiny-clip (as tests/test_matrix.py does).
TINY_OPTIONS = {"st-adapter": {"bottleneck": 16}, "dualpath": {"spatial_frames": 2, "grid": 2}}
TINY_CLASSES = ["square growing", "disc fading", "red turning blue"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="clip", help="backbone name (default clip, i.e. CLIP ViT-B/16)")
    p.add_argument("--weights", default="random", help="'random' (default: nothing downloaded) or a local file")
    p.add_argument("--methods", default="frozen,st-adapter,zeroi2v", help="comma-separated method names")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=1, help="clips per call")
    p.add_argument("--num-classes", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3, help="timed calls of each kind; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one")
    p.add_argument("--backend", help="torch.compile backend (default inductor; with --check-all aot_eager)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--cold", action="store_true",
                   help="time compiling without inductor's on-disk caches (a second run otherwise reuses them)")
    p.add_argument("--quick", action="store_true", help="tiny-clip, 4 frames: the whole table in about a minute")
    p.add_argument("--check-all", action="store_true",
                   help="instead of timing: every registered method on tiny-clip, aot_eager, fullgraph=False")
    p.add_argument("--tolerance", type=float, default=1e-5, help="--check-all: max abs difference allowed")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.frames = "tiny-clip", 4
    args.backend = args.backend or ("aot_eager" if args.check_all else "inductor")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(call, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    call()
    _sync(device)   # kernels are asynchronous on GPU: wait for them before reading the clock
    return time.perf_counter() - start


def alternate_medians(eager_call, compiled_call, device, repeats: int, warmup: int) -> tuple[float, float]:
    """Median seconds of each call, timed in turn so that a change in machine load falls on both."""
    for _ in range(warmup):
        eager_call(), compiled_call()
    eager, compiled = [], []
    for _ in range(repeats):
        eager.append(_seconds(eager_call, device))
        compiled.append(_seconds(compiled_call, device))
    return statistics.median(eager), statistics.median(compiled)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def gradients(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def grad_difference(eager: dict, compiled: dict) -> float:
    if set(eager) != set(compiled):   # a tensor with a gradient in one run only is a real difference
        return float("inf")
    return max((max_abs(eager[n], compiled[n]) for n in eager), default=0.0)


def forward_backward(net, model, clip, labels, seed: int = 0):
    """Logits of ``net`` (``model`` or its compiled wrapper) and ``model``'s gradients after one
    cross-entropy backward, from a fixed random state (dropout, drop path)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = net(clip)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach(), gradients(model)


def build(method: str, backbone: str, weights: str, num_classes: int, frames: int, device, tiny: bool):
    torch.manual_seed(0)
    names = None
    if get_method(method).needs_text or tiny:
        names = TINY_CLASSES if tiny else [f"class {i}" for i in range(num_classes)]
    options = TINY_OPTIONS.get(method, {}) if tiny else {}
    model = build_model(backbone, method, None if names else num_classes, class_names=names, weights=weights,
                        num_frames=frames, **options)
    return model.to(device)


def perturb_trainable(model, scale: float = 0.05) -> None:
    """Move every trainable tensor off its initialisation, so zero-initialised adapters and gates do not
    hide a difference between the compiled and the eager paths."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator).to(p.device) * scale)


# ---- timing -------------------------------------------------------------------------------------------

def time_method(args, method: str, device) -> dict:
    model = build(method, args.backbone, args.weights, args.num_classes, args.frames, device, tiny=False)
    perturb_trainable(model)   # (costs nothing in time; makes the differences below mean something)
    size = model.backbone.preprocess.image_size
    clip = torch.randn(args.batch, 3, args.frames, size, size, device=device)
    labels = torch.zeros(args.batch, dtype=torch.long, device=device)
    compiled = torch.compile(model, backend=args.backend)
    row = {"method": method}

    model.eval()
    with torch.no_grad():
        eager_out = model(clip)
        start = time.perf_counter()
        compiled_out = compiled(clip)
        _sync(device)
        row["compile_infer_s"] = time.perf_counter() - start
        row["infer_diff"] = max_abs(compiled_out, eager_out)
        row["infer_eager_s"], row["infer_compiled_s"] = alternate_medians(
            lambda: model(clip), lambda: compiled(clip), device, args.repeats, args.warmup)

    model.train()
    eager_logits, eager_grads = forward_backward(model, model, clip, labels)
    start = time.perf_counter()
    compiled_logits, compiled_grads = forward_backward(compiled, model, clip, labels)   # compiles forward and backward
    _sync(device)
    row["compile_train_s"] = time.perf_counter() - start
    row["train_out_diff"] = max_abs(compiled_logits, eager_logits)
    row["grad_diff"] = grad_difference(eager_grads, compiled_grads)
    row["max_grad"] = max((float(g.abs().max()) for g in eager_grads.values()), default=0.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step(net):
        def call():
            torch.nn.functional.cross_entropy(net(clip), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return call
    row["train_eager_s"], row["train_compiled_s"] = alternate_medians(
        step(model), step(compiled), device, args.repeats, args.warmup)
    del compiled, model
    torch._dynamo.reset()   # the next model's forward is the same code: start from an empty cache
    return row


def print_timing(args, rows) -> None:
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    caches = "no compile caches" if args.cold else "compile caches as found"
    print(f"# {args.backbone} ({args.weights}), {args.batch} x {args.frames} frames, backend {args.backend}, "
          f"{where}, median of {args.repeats} after {args.warmup} warm-up, {caches}")
    head = ["method", "infer eager ms", "infer compiled ms", "infer speed-up", "train eager ms", "train compiled ms",
            "train speed-up", "1st compiled infer s", "1st compiled train s", "max abs diff logits (eval / train)",
            "max abs diff grads (largest grad)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["method"], f"{1000 * r['infer_eager_s']:.1f}", f"{1000 * r['infer_compiled_s']:.1f}",
                 f"{r['infer_eager_s'] / r['infer_compiled_s']:.2f}x", f"{1000 * r['train_eager_s']:.1f}",
                 f"{1000 * r['train_compiled_s']:.1f}", f"{r['train_eager_s'] / r['train_compiled_s']:.2f}x",
                 f"{r['compile_infer_s']:.1f}", f"{r['compile_train_s']:.1f}",
                 f"{r['infer_diff']:.2e} / {r['train_out_diff']:.2e}", f"{r['grad_diff']:.2e} ({r['max_grad']:.2e})"]
        print("| " + " | ".join(cells) + " |")


# ---- every method, aot_eager (--check-all) ---------------------------------------------------------------------------

class CountingBackend:
    """A backend (aot_eager: the graphs as captured, run through AOTAutograd without code generation)
    that also counts the graphs dynamo hands over and the operations in them."""

    def __init__(self, name: str) -> None:
        self.backend = lookup_backend(name)
        self.graphs = 0
        self.ops = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        self.ops += sum(node.op in ("call_function", "call_method", "call_module") for node in gm.graph.nodes)
        return self.backend(gm, example_inputs)


def one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text if len(text) <= 200 else text[:197] + "..."


def tiny_model(method: str):
    model = build(method, "tiny-clip", None, 3, 4, torch.device("cpu"), tiny=True)
    perturb_trainable(model)
    return model


def check_method(method: str, tolerance: float, backend_name: str = "aot_eager") -> dict:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = tiny_model(method)
    clip = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2])
    backend = CountingBackend(backend_name)
    compiled = torch.compile(model, backend=backend, fullgraph=False)
    result = {"method": method, "infer_diff": None, "grad_diff": None, "error": ""}
    stage = "eval forward"
    try:
        model.eval()
        with torch.no_grad():
            result["infer_diff"] = max_abs(compiled(clip), model(clip))
        stage = "train forward + backward"
        model.train()
        eager_logits, eager_grads = forward_backward(model, model, clip, labels)
        compiled_logits, compiled_grads = forward_backward(compiled, model, clip, labels)
        result["train_out_diff"] = max_abs(compiled_logits, eager_logits)
        result["grad_diff"] = grad_difference(eager_grads, compiled_grads)
    except Exception as error:   # noqa: BLE001 - the point is to list what fails, and why
        result["error"] = f"{stage}: {one_line(error)}"
        if os.environ.get("BENCH_COMPILE_TRACEBACK"):
            traceback.print_exc()
    breaks = torch._dynamo.utils.counters["graph_break"]
    result.update(graphs=backend.graphs, ops=backend.ops, breaks=sum(breaks.values()),
                  reasons=break_places(tiny_model(method), clip) if breaks else [])
    diffs = [result[k] for k in ("infer_diff", "train_out_diff", "grad_diff") if result.get(k) is not None]
    result["equal"] = not result["error"] and len(diffs) == 3 and max(diffs) <= tolerance
    return result


def break_places(model, clip) -> list[str]:
    """Each graph break's reason and the line of user code it happened at, in eval then in train mode as
    the check ran them, on a fresh ``model`` (a text classifier's cache changes what is traced);
    ``torch._dynamo.explain`` traces once more, so this runs only for a method that broke."""
    places = set()
    torch._dynamo.reset()
    for training in (False, True):
        model.train(training)
        try:
            with torch.set_grad_enabled(training):
                explanation = torch._dynamo.explain(model)(clip)
        except Exception as error:   # noqa: BLE001 - the check above already names the failure
            places.add(f"explain failed: {one_line(error)}")
            continue
        for reason in explanation.break_reasons:
            frame = reason.user_stack[-1] if reason.user_stack else None
            path = frame.filename.split("site-packages/")[-1] if frame else ""   # ftfy/..., adaptvid/...
            where = f" at {os.path.relpath(path) if os.path.isabs(path) else path}:{frame.lineno}" if frame else ""
            places.add(reason.reason.splitlines()[0][:120] + where)
    return sorted(places)


def check_all(args) -> int:
    # Dropout and drop path draw from the same generator in both runs only if compiled code uses aten's
    # random ops (aot_eager does; this keeps inductor, if swapped in, comparable too).
    torch._inductor.config.fallback_random = True
    rows = []
    for method in sorted(list_methods()):
        start = time.perf_counter()
        row = check_method(method, args.tolerance, args.backend)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"{method}: {'ok' if row['equal'] else 'FAIL'} ({row['seconds']:.1f} s)", file=sys.stderr, flush=True)
    print(f"# every method on tiny-clip, 2 x 4 frames, backend {args.backend}, fullgraph=False, "
          f"tolerance {args.tolerance:g}")
    head = ["method", "compiles and equals eager", "max abs diff eval / train logits / grads", "graphs",
            "graph breaks", "captured ops", "s", "why not / break reasons"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        diffs = " / ".join("-" if r.get(k) is None else f"{r[k]:.1e}"
                           for k in ("infer_diff", "train_out_diff", "grad_diff"))
        why = r["error"] or "; ".join(r["reasons"])
        cells = [r["method"], "yes" if r["equal"] else "NO", diffs, str(r["graphs"]), str(r["breaks"]), str(r["ops"]),
                 f"{r['seconds']:.1f}", why.replace("|", "/")]
        print("| " + " | ".join(cells) + " |")
    return 0 if all(r["equal"] for r in rows) else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.check_all:
        return check_all(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    # Compiled dropout / drop path draw the eager generator's numbers, so the gradients can be compared.
    torch._inductor.config.fallback_random = True
    torch._inductor.config.force_disable_caches = args.cold
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        rows.append(time_method(args, method, device))
        print(f"{method}: done", file=sys.stderr, flush=True)
    print_timing(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
