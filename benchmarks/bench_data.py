"""Data-pipeline throughput: decode + sample + transform, side by side in one process, interleaved.

What one DataLoader worker does for one training clip is ``VideoDataset[i]``: open the file, pick the
frame indices (segment or dense sampling), decode them, take the random-resized 224 crop, normalise.
This script times exactly that on real H.264 files it generates itself with PyAV (a textured scene
under a panning camera plus a moving object; libx264 ``veryfast``, crf 23, x264's default keyframe
interval, as ffmpeg-cut Kinetics clips are), at 360p, 720p and 1080p:

(a) clips per CPU-second of one worker (one process, one thread) for decord, PyAV and the same video
    extracted once to a folder of JPEGs, decoding at full size vs at reduced size
    (``decode_short_side="auto"``: decord scales at open, PyAV inside its RGB conversion, JPEGs through
    libjpeg's DCT scaling), segment vs dense sampling, and the test-time clip. Timed with the process's
    CPU clock (``time.process_time``): what a worker costs on a core of its own, which other jobs on a
    shared machine inflate far less than wall time. The variants of one row run in one round, in
    rotating order, ``--repeats`` rounds; the table gives the median rate, the median of the per-round
    ratios and their spread (min-max), and the workers needed to feed ``--feed`` clips/s.
(b) how far the reduced-size decode moves the model input: the test-time clip (short side resized
    to 224, centre crop) from a full-size and a reduced-size decode, in 0-255 pixel units (all
    channels and luma), next to what switching the resize from bicubic to bilinear changes.
(c) a torch DataLoader over ``VideoDataset`` with ``--workers`` processes: clips/s (wall) of a whole
    pass (worker start included), interleaved, ratio to the first worker count.
(d) end to end: training epochs of ``frozen`` on the tiny backbone from live decoding vs from cached
    backbone features (``adaptvid.train.feature_cache``, what ``--cache-features`` uses), interleaved,
    CPU seconds; the one-off extraction pass is timed too.

Load on a shared machine moves every time: the load average is printed at the start and the end.

    python benchmarks/bench_data.py            # ~2 min on a 2-core CPU (+ ~15 s to make the videos once)
    python benchmarks/bench_data.py --quick    # 2-second videos, 2 repeats, < 1 min
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny backbone is built locally: never wait on a hub

import numpy as np  # noqa: E402
import torch  # noqa: E402

HEIGHTS = {360: (360, 640), 720: (720, 1280), 1080: (1080, 1920)}
NUM_FRAMES, STRIDE, SIZE = 8, 4, 224


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2-second videos, 2 repeats, fewer clips: < 1 min")
    p.add_argument("--repeats", type=int, help="interleaved rounds per comparison (default 3, 2 with --quick)")
    p.add_argument("--seconds", type=float, help="video length (default 10, 2 with --quick)")
    p.add_argument("--fps", type=int, default=30, help="video frame rate (default 30)")
    p.add_argument("--resolutions", default="360,720,1080", help="comma-separated heights: 360,720,1080")
    p.add_argument("--backends", default="decord,pyav,frames",
                   help="readers to compare: decord, pyav (those not installed are skipped) and frames (the same "
                        "video extracted once to a folder of JPEGs)")
    p.add_argument("--workers", default="0,1,2", help="DataLoader worker counts for (c), e.g. 1,4,8,16")
    p.add_argument("--worker-resolution", type=int, default=720, help="video height for (c) (default 720)")
    p.add_argument("--feed", type=float, default=500.0,
                   help="clips/s the GPU consumes, for the 'workers needed' column (default 500: an estimate "
                        "for ViT-B/16 8x224 training on one H100, see benchmarks/README.md)")
    p.add_argument("--only", default="decode,inputs,workers,train", help="subset of decode,inputs,workers,train")
    p.add_argument("--video-dir", default=os.path.join(tempfile.gettempdir(), "adaptvid-bench-data"),
                   help="where the generated videos are kept and reused (default: a folder in the temp dir)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process (default 1, as a worker)")
    return p.parse_args(argv)


# -- the videos ----------------------------------------------------------------------------------------

def _texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A multi-scale random texture (uint8 RGB): compresses like filmed content, not like noise.

    Colour varies at the coarse scales only and fine detail is grey, as in natural images (most of their
    fine detail is in the luminance, which is also what 4:2:0 video keeps at full resolution).
    """
    canvas = torch.zeros(1, 3, height, width)
    for cell, amplitude, colour in ((64, 90.0, True), (16, 45.0, True), (4, 20.0, False), (1, 6.0, False)):
        coarse = torch.from_numpy(rng.standard_normal((1, 3 if colour else 1, height // cell + 2,
                                                       width // cell + 2)).astype(np.float32))
        canvas += amplitude * torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear",
                                                              align_corners=False)
    return (canvas[0] + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def make_video(path: Path, height: int, width: int, seconds: float, fps: int, seed: int = 0) -> None:
    """An H.264 (yuv420p) mp4 of a panning textured scene with a moving square, written atomically."""
    import av

    count = max(1, round(seconds * fps))
    rng = np.random.default_rng(seed)
    pan_x, pan_y = 2, 1   # pixels per frame: a slow camera pan keeps every macroblock moving
    scene = _texture(height + pan_y * count + 1, width + pan_x * count + 1, rng)
    box = max(8, height // 6)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for t in range(count):
            frame = scene[pan_y * t:pan_y * t + height, pan_x * t:pan_x * t + width].copy()
            top = int((height - box) * (0.5 + 0.4 * math.sin(t / 15)))
            left = int((width - box) * t / max(1, count - 1))
            frame[top:top + box, left:left + box] = (230, 60, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.replace(path)


def frame_folder(video: Path) -> Path:
    """The video's frames as JPEGs (quality 90, ``img_00001.jpg`` ...) next to it, extracted once."""
    import av
    from PIL import Image

    folder = video.with_name(video.stem + "_frames")
    if not folder.is_dir():
        partial = video.with_name(video.stem + "_frames.partial")
        partial.mkdir(exist_ok=True)
        with av.open(str(video)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(partial / f"img_{i + 1:05d}.jpg", quality=90)
        partial.rename(folder)
    return folder


def videos(args, heights) -> dict:
    """{height: path}, generated into --video-dir the first time (kept for later runs)."""
    folder = Path(args.video_dir)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for h in heights:
        height, width = HEIGHTS[h]
        path = folder / f"scene2_{h}p_{args.seconds:g}s_{args.fps}fps.mp4"   # 2: grey fine detail
        if not path.exists():
            start = time.perf_counter()
            make_video(path, height, width, args.seconds, args.fps)
            print(f"# made {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s",
                  flush=True)
        out[h] = path
    return out


# -- helpers -------------------------------------------------------------------------------------------

def rounds(variants: dict, repeats: int, warmup: bool = True, clock=time.perf_counter) -> dict:
    """{name: [seconds per round]}: each round calls every variant once, the order rotating between rounds.

    ``clock=time.process_time`` counts this process's CPU seconds (all its threads) instead of wall time:
    what one worker costs on a core of its own, which other jobs on a shared machine do not inflate as much.
    """
    names = list(variants)
    for name in names if warmup else ():   # untimed: imports, first open of the file, allocator
        variants[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = clock()
            variants[name]()
            times[name].append(clock() - start)
    return times


def speedup(times: list, reference: list) -> str:
    """How many times faster than `reference`: the median of the per-round time ratios and their spread."""
    ratios = [ref / t for t, ref in zip(times, reference)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def transform(train: bool):
    from adaptvid.data import VideoTransform
    from adaptvid.data.transforms import CLIP_MEAN, CLIP_STD

    # CLIP's preprocessing: bicubic, the default training crop scale (0.25, 1)
    return VideoTransform(SIZE, CLIP_MEAN, CLIP_STD, train=train, interpolation="bicubic")


def dataset(path, backend, reduced: bool, sampling: str, train: bool = True, copies: int = 1):
    from adaptvid.data import VideoDataset, VideoSample

    if backend == "frames":   # a folder is read as frames whatever the backend says
        path, backend = frame_folder(Path(path)), None
    return VideoDataset([VideoSample(str(path), 0)] * copies, num_frames=NUM_FRAMES, transform=transform(train),
                        sampling=sampling, stride=STRIDE, train=train, backend=backend,
                        decode_short_side="auto" if reduced else None)


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


# -- (a) clips/s per worker ---------------------------------------------------------------------------

def bench_decode(args, paths: dict, backends: list, repeats: int, clips: int) -> None:
    print(f"\n## (a) decode + sample + transform, one worker (1 thread): clips per CPU-second (process time, so "
          f"other jobs on the machine inflate it less than wall time), {NUM_FRAMES} frames -> {SIZE} px; "
          f"median of {repeats} interleaved rounds of {clips} clip(s)\n")
    head = ["video", "sampling"]
    for b in backends:
        head += [f"{b} full", f"{b} reduced", f"{b} reduced/full"]
    pair = "decord" in backends and "pyav" in backends
    if pair:
        head.append("decord/pyav (reduced)")
    head.append(f"workers for {args.feed:g} clips/s (fastest)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    warm = True   # the first group warms up the readers; later groups are seconds per clip already
    for h, path in paths.items():
        for sampling, train in (("segment", True), ("dense", True), ("segment", False)):
            sets = {(b, r): dataset(path, b, r, sampling, train, copies=clips) for b in backends for r in (False, True)}

            def run(ds):
                return lambda: [ds[i] for i in range(len(ds))]

            times = rounds({key: run(ds) for key, ds in sets.items()}, repeats, warmup=warm, clock=time.process_time)
            warm = False
            rate = {key: clips / statistics.median(t) for key, t in times.items()}
            row = [f"{h}p", sampling if train else f"{sampling}, test-time"]
            for b in backends:
                row += [f"{rate[(b, False)]:.2f}", f"{rate[(b, True)]:.2f}",
                        speedup(times[(b, True)], times[(b, False)])]
            if pair:
                row.append(speedup(times[("decord", True)], times[("pyav", True)]))
            best = max(rate.values())
            row.append(f"{math.ceil(args.feed / best)} ({best:.2f}/worker)")
            print("| " + " | ".join(row) + " |", flush=True)
    print(f"\nreduced = decode_short_side='auto': training decodes at short side ceil({SIZE}/sqrt(0.25)) = "
          f"{math.ceil(SIZE / 0.5)} (a 360p file is never enlarged, so its training rows decode at full size "
          f"either way: they show the noise), test-time at {SIZE}. Ratios are speed-ups: the first variant's "
          f"clips/s over the second's, per round; 'workers for N clips/s' divides by the fastest variant.")


# -- (b) the model input from a full vs a reduced decode ----------------------------------------------

def bench_inputs(paths: dict, backends: list) -> None:
    from adaptvid.data.transforms import CLIP_STD

    print("\n## (b) test-time model input, reduced vs full-size decode (short side 224, centre crop, bicubic)\n")
    print("| video | reader | decode short side | mean abs diff (0-255) | 99th pct | max | luma mean "
          "| for scale: bilinear vs bicubic resize, full decode (mean / 99th pct) |")
    print("|---|---|---|---|---|---|---|---|")
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1, 1) * 255
    for h, path in paths.items():
        for b in backends:
            full = dataset(path, b, False, "segment", train=False)
            reduced = dataset(path, b, True, "segment", train=False)
            bilinear = dataset(path, b, False, "segment", train=False)
            bilinear.transform.interpolation = "bilinear"
            reference = full[0]["video"]
            signed = (reduced[0]["video"] - reference) * std
            diff = signed.abs()
            interp = ((bilinear[0]["video"] - reference) * std).abs()
            print(f"| {h}p | {b} | {reduced.decode_short_side} | {diff.mean():.2f} | "
                  f"{diff.flatten().quantile(0.99):.1f} | {diff.max():.0f} | "
                  f"{(signed * luma).sum(0).abs().mean():.2f} | "
                  f"{interp.mean():.2f} / "
                  f"{interp.flatten().quantile(0.99):.1f} |", flush=True)


# -- (c) DataLoader workers ----------------------------------------------------------------------------

def bench_workers(args, path, backend: str, counts: list, repeats: int, per_worker: int) -> None:
    from torch.utils.data import DataLoader

    from adaptvid.data import collate_videos

    total = per_worker * max(1, max(counts))
    ds = dataset(path, backend, False, "segment", copies=total)   # full-size decoding: the runner's default

    def run(workers):
        def once():
            loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_videos)
            got = sum(len(batch["label"]) for batch in loader)
            assert got == total, f"{got} of {total} clips"
        return once

    # no untimed pass: with 1 worker it costs as much as a round; (a) has warmed up the reader already
    times = rounds({w: run(w) for w in counts}, repeats, warmup=False)
    first = counts[0]
    print(f"\n## (c) torch DataLoader over VideoDataset: {args.worker_resolution}p, {backend}, full-size decode, "
          f"segment sampling, batch 2, {total} clips per pass (worker start included, no warm-up pass); "
          f"{os.cpu_count()} CPUs; median of {repeats} interleaved rounds\n")
    print(f"| num_workers | clips/s | vs num_workers={first} (spread) |")
    print("|---|---|---|")
    for w in counts:
        print(f"| {w} | {total / statistics.median(times[w]):.2f} | {speedup(times[w], times[first])} |", flush=True)


# -- (d) training from cached features vs live decoding ----------------------------------------------

def bench_train(path, repeats: int, copies: int) -> None:
    from torch.utils.data import DataLoader

    from adaptvid import build_model
    from adaptvid.data import VideoSample, collate_videos
    from adaptvid.runner.data import make_dataset
    from adaptvid.train.feature_cache import cached_dataset

    torch.manual_seed(0)
    model = build_model("tiny-clip", "frozen", num_classes=2, num_frames=NUM_FRAMES)
    samples = [VideoSample(str(path), i % 2) for i in range(copies)]
    live = make_dataset(model, {}, samples, train=True)   # the runner's default data settings
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)

    def epoch(ds, from_features: bool):
        def once():
            model.from_features = from_features
            model.train()
            for batch in DataLoader(ds, batch_size=4, shuffle=False, num_workers=0, collate_fn=collate_videos):
                loss = torch.nn.functional.cross_entropy(model(batch["video"]), batch["label"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.from_features = False
        return once

    with tempfile.TemporaryDirectory() as cache:
        start = time.process_time()
        cached = cached_dataset(model, live, cache, "train", batch_size=4, num_workers=0)
        extraction = time.process_time() - start
        times = rounds({"live": epoch(live, False), "cached": epoch(cached, True)}, repeats, clock=time.process_time)
    live_s, cached_s = statistics.median(times["live"]), statistics.median(times["cached"])
    print(f"\n## (d) training epochs of `frozen` on tiny-clip (64 px, {NUM_FRAMES} frames), {copies} clips of "
          f"{path.name}, batch 4, loader in-process, CPU seconds; median of {repeats} interleaved epochs\n")
    print("| training from | clips per CPU-s | epoch CPU-s | speed-up (spread) |")
    print("|---|---|---|---|")
    print(f"| live decoding (decode_short_side={live.decode_short_side}) | {copies / live_s:.2f} | {live_s:.2f} | 1 |")
    print(f"| cached features | {copies / cached_s:.1f} | {cached_s:.3f} | {speedup(times['cached'], times['live'])} |")
    print(f"\nthe one-off extraction pass took {extraction:.2f} CPU-s ({extraction / live_s:.1f} live epochs).",
          flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 10.0
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"decode", "inputs", "workers", "train"})
    if unknown or not parts:
        raise SystemExit(f"--only: unknown part(s) {unknown}; choose from decode,inputs,workers,train")
    heights = [int(h) for h in args.resolutions.split(",") if h.strip()]
    bad = [h for h in heights if h not in HEIGHTS]
    if bad:
        raise SystemExit(f"--resolutions: {bad} not among {sorted(HEIGHTS)}")
    from adaptvid.data import available_backends

    backends = [b for b in args.backends.split(",") if b in available_backends() + ["frames"]]
    if not backends:
        raise SystemExit(f"--backends {args.backends}: none installed ({available_backends()})")
    counts = [int(w) for w in args.workers.split(",")]
    started = time.perf_counter()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"# bench_data: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} torch thread(s); "
          f"load average (1/5/15 min) at start {load_text()}")
    wanted = sorted(set(heights) | ({args.worker_resolution} if "workers" in parts else set())
                    | ({360} if "train" in parts else set()))
    paths = videos(args, wanted)
    print(f"# videos: {args.seconds:g} s at {args.fps} fps, H.264 yuv420p (libx264 veryfast, crf 23): "
          + ", ".join(f"{h}p {paths[h].stat().st_size * 8 / args.seconds / 1e6:.1f} Mbit/s" for h in wanted))
    chosen = {h: paths[h] for h in heights}
    if "decode" in parts:
        bench_decode(args, chosen, backends, repeats, clips=1)
    if "inputs" in parts:
        bench_inputs(chosen, backends)
    if "workers" in parts:
        bench_workers(args, paths[args.worker_resolution], next(b for b in backends if b != "frames"), counts, repeats,
                      per_worker=2 if args.quick else 4)
    if "train" in parts:
        bench_train(paths[360], repeats, copies=4 if args.quick else 8)
    print(f"\n# load average at the end {load_text()}; wall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
