"""A small synthetic task that only a model which uses frame order can solve.

Classes come in mirror pairs: every video of one class is a video of its
partner class played backwards.  Each clip is built forwards with its own
random nuisance (position, size, colours, background), then reversed for the
mirror class with nuisance drawn from the same distribution.  A clip and its
reverse contain exactly the same frames, so any order-invariant model (for
example one that averages per-frame features) sees identically distributed
inputs for both classes of a pair and cannot beat 50% within it.  (This is
exact for whole videos and for random segment sampling when the clip length
divides the video length.  Deterministic centre sampling of, e.g., 8 of 32
frames picks frames 2, 6, .., 30 of a clip but 1, 5, .., 29 of its reverse:
a one-frame shift, tiny next to the per-video nuisance.)

The cues are large, high-contrast and local (no left/right motion), so a tiny
randomly initialised backbone can learn them in a few minutes on a CPU.
Videos are lossless H.264 (yuv420p, qp=0): decoding returns the same frames
whatever the order they were encoded in, so codec artefacts cannot leak the
direction of time either.

Run ``python -m adaptvid.data.demo DIR`` (or ``adaptvid demo-data DIR``).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import time
from pathlib import Path

import numpy as np

# Forward clip name, then its mirror (the same clip reversed).  Label = position.
_PAIRS = (
    ("square growing", "square shrinking"),
    ("disc brightening", "disc fading"),
    ("red turning blue", "blue turning red"),
)
# Background stays at or below this level and the growing/shrinking squares
# have a channel at or above OBJECT_MIN, so "channel max > threshold" finds them.
BACKGROUND_MAX = 110
OBJECT_MIN = 170


# Two captions per class for text-video retrieval: they name the object, its colour and the
# direction of the change.  "{colour}" is the object's colour, read from the clip
# ("{a_colour}": with its article).
_CAPTIONS = (
    ("{a_colour} square grows", "a small {colour} square gets bigger"),
    ("{a_colour} square shrinks", "a big {colour} square gets smaller"),
    ("{a_colour} disc brightens", "a faint {colour} disc fades in"),
    ("{a_colour} disc fades", "a bright {colour} disc fades out"),
    ("a red square turns blue", "a square changes colour from red to blue"),
    ("a blue square turns red", "a square changes colour from blue to red"),
)


def demo_class_names() -> list[str]:
    """The six class names; label i is names[i], classes 2k and 2k+1 mirror each other."""
    return [name for pair in _PAIRS for name in pair]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark, noisy, per-video background, float (size, size, 3), fixed over time."""
    base = rng.uniform(15, 75, size=3)
    noise = rng.normal(0.0, 8.0, size=(size, size, 3))
    return np.clip(base + noise, 0, BACKGROUND_MAX)


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    """A random colour with at least one strong channel, so it stands out."""
    colour = rng.uniform(60, 255, size=3)
    colour[rng.integers(3)] = rng.uniform(200, 255)
    return colour


# Each forward generator returns one (mask, colour, opacity) layer per frame.

def _square_growing(rng, size, t):
    """A square whose side grows linearly; centre and colour fixed per video."""
    small, large = rng.uniform(0.1, 0.18) * size, rng.uniform(0.45, 0.62) * size
    cy, cx = rng.uniform(large / 2, size - large / 2, size=2)
    colour = _bright_colour(rng)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return [((np.abs(yy - cy) <= side / 2) & (np.abs(xx - cx) <= side / 2), colour, 1.0)
            for side in small + (large - small) * t]


def _disc_brightening(rng, size, t):
    """A disc of fixed size and place that fades in from the background."""
    radius = rng.uniform(0.18, 0.3) * size
    cy, cx = rng.uniform(radius, size - radius, size=2)
    colour = _bright_colour(rng)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    start = rng.uniform(0.0, 0.15)
    return [(inside, colour, start + (1 - start) * a) for a in t]


def _red_to_blue(rng, size, t):
    """A fixed square patch whose colour moves linearly from red to blue."""
    side = rng.uniform(0.3, 0.5) * size
    cy, cx = rng.uniform(side / 2, size - side / 2, size=2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    inside = (np.abs(yy - cy) <= side / 2) & (np.abs(xx - cx) <= side / 2)
    green = rng.uniform(0, 60)
    red = np.array([rng.uniform(200, 255), green, rng.uniform(0, 40)])
    blue = np.array([rng.uniform(0, 40), green, rng.uniform(200, 255)])
    return [(inside, (1 - a) * red + a * blue, 1.0) for a in t]


_FORWARD = (_square_growing, _disc_brightening, _red_to_blue)


def _render(layers, background: np.ndarray) -> np.ndarray:
    """Blend each frame's layer over the background -> uint8 (T, H, W, 3)."""
    frames = []
    for mask, colour, opacity in layers:
        frame = background.copy()
        frame[mask] = (1 - opacity) * background[mask] + opacity * colour
        frames.append(frame)
    return np.rint(np.stack(frames)).astype(np.uint8)


def make_clip(label: int, rng: np.random.Generator, num_frames: int = 32,
              size: int = 80) -> np.ndarray:
    """One uint8 (T, H, W, 3) clip of class `label`, nuisance drawn from `rng`.

    Odd labels are the reversed forward clip of the pair: same frames, opposite order.
    """
    pair, mirrored = divmod(int(label), 2)
    if not 0 <= pair < len(_PAIRS):
        raise ValueError(f"demo labels are 0..{2 * len(_PAIRS) - 1}, got {label}")
    t = np.linspace(0.0, 1.0, num_frames)
    background = _background(rng, size)
    clip = _render(_FORWARD[pair](rng, size, t), background)
    return clip[::-1].copy() if mirrored else clip


def colour_name(rgb) -> str:
    """A plain colour word for an RGB triple (0..255): white, grey, or a hue name."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    hue, saturation, value = colorsys.rgb_to_hsv(r, g, b)
    if saturation < 0.15:
        return "white" if value > 0.7 else "grey"
    degrees = hue * 360.0
    for limit, name in ((15, "red"), (45, "orange"), (70, "yellow"), (165, "green"),
                        (200, "cyan"), (255, "blue"), (290, "purple"), (335, "pink")):
        if degrees < limit:
            return name
    return "red"


def object_colour(frames: np.ndarray) -> np.ndarray:
    """The mean RGB of the object where it shows most (largest or most opaque) in a clip.

    Object pixels are those with a channel at or above OBJECT_MIN (the background stays at
    or below BACKGROUND_MAX); the frame with the largest sum of their brightest channels is
    the full-size square or the fully opaque disc.
    """
    peak = frames.max(axis=-1).astype(np.float64)
    mask = peak >= OBJECT_MIN
    best = int(np.argmax((peak * mask).sum(axis=(1, 2))))
    if not mask[best].any():
        return frames[best].reshape(-1, 3).mean(axis=0)
    return frames[best][mask[best]].astype(np.float64).mean(axis=0)


def demo_captions(label: int, frames: np.ndarray) -> list[str]:
    """The two captions of a demo clip of class `label` (uint8 frames (T, H, W, 3))."""
    if not 0 <= int(label) < len(_CAPTIONS):
        raise ValueError(f"demo labels are 0..{len(_CAPTIONS) - 1}, got {label}")
    colour = colour_name(object_colour(frames)) if int(label) < 4 else ""
    article = "an" if colour[:1] in ("a", "e", "i", "o", "u") else "a"
    return [text.format(colour=colour, a_colour=f"{article} {colour}")
            for text in _CAPTIONS[int(label)]]


def write_video(path, frames: np.ndarray, fps: int = 8) -> None:
    """Encode uint8 (T, H, W, 3) RGB frames as lossless H.264 mp4 (yuv420p)."""
    import av

    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # qp=0: lossless in YUV, so decoded frames do not depend on encode order.
        # One thread keeps the bitstream byte-identical from run to run.
        stream.options = {"qp": "0", "preset": "veryfast"}
        stream.codec_context.thread_count = 1
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_demo_data(out_dir, seed: int = 0, videos_per_class_train: int = 40,
                   videos_per_class_val: int = 12, num_frames: int = 32, size: int = 80,
                   fps: int = 8) -> dict:
    """Write the demo dataset under `out_dir` and return its paths.

    Layout: ``{train,val}/<class_slug>/NNN.mp4``, ``train.txt`` and ``val.txt``
    (``relative/path label`` lines, relative to `out_dir`), ``classes.txt``, and
    ``captions_train.jsonl`` / ``captions_val.jsonl`` for text-video retrieval (one
    ``{"video": relative path, "captions": [2 captions]}`` line per video, in list
    order; the captions name the object, its colour and the direction of the change).
    The same seed gives the same frames (and, with the same PyAV/x264 build,
    the same bytes).  Returns {"root", "train", "val", "classes", "captions_train",
    "captions_val"} as str paths.
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and >= 16 (yuv420p halves it), got {size}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 for a change over time, got {num_frames}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    names = demo_class_names()
    counts = {"train": videos_per_class_train, "val": videos_per_class_val}
    for split_id, (split, per_class) in enumerate(counts.items()):
        lines, captions = [], []
        for label, name in enumerate(names):
            folder = root / split / name.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                # Independent stream per video: changing one count does not
                # reshuffle the other videos.
                rng = np.random.default_rng([seed, split_id, label, k])
                relative = f"{split}/{folder.name}/{k:03d}.mp4"
                clip = make_clip(label, rng, num_frames, size)
                write_video(root / relative, clip, fps)
                lines.append(f"{relative} {label}")
                captions.append(json.dumps({"video": relative,
                                            "captions": demo_captions(label, clip)}))
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (root / f"captions_{split}.jsonl").write_text(
            "".join(line + "\n" for line in captions), encoding="utf-8")
    (root / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return {"root": str(root), "train": str(root / "train.txt"),
            "val": str(root / "val.txt"), "classes": str(root / "classes.txt"),
            "captions_train": str(root / "captions_train.jsonl"),
            "captions_val": str(root / "captions_val.jsonl")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m adaptvid.data.demo",
                                     description="Write the synthetic frame-order demo dataset.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=12)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=80)
    parser.add_argument("--fps", type=int, default=8)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = make_demo_data(args.out_dir, args.seed, args.train_per_class,
                           args.val_per_class, args.num_frames, args.size, args.fps)
    print(f"wrote demo data to {os.path.abspath(paths['root'])} "
          f"in {time.perf_counter() - start:.1f}s")
    for key in ("train", "val", "classes", "captions_train", "captions_val"):
        print(f"  {key}: {paths[key]}")


if __name__ == "__main__":
    main()
