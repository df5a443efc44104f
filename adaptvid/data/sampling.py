"""Which frame indices to read from a video.

Two standard schemes:

* segment (TSN): cut the video into `num_frames` equal segments and take one
  frame from each, so a clip always spans the whole video whatever its length.
* dense: `num_frames` frames a fixed `stride` apart, covering a window of
  ``num_frames * stride`` frames somewhere in the video.

Randomness comes only from a ``numpy.random.Generator`` passed in by the
caller, so a dataset can make every item reproducible.  All arithmetic is on
integers, so the test-time indices are exact and platform independent.
"""

from __future__ import annotations

import re

import numpy as np


def _check_counts(num_total: int, num_frames: int) -> None:
    if num_total < 1:
        raise ValueError(f"the video has {num_total} frames; need at least 1")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    # None means "fresh OS entropy": fine for ad-hoc use, not reproducible.
    return rng if rng is not None else np.random.default_rng()


def segment_indices(num_total: int, num_frames: int, train: bool,
                    rng: np.random.Generator | None = None) -> list[int]:
    """TSN sampling: one index per equal segment of [0, num_total).

    Segment k is [k*num_total//num_frames, (k+1)*num_total//num_frames).
    Train: a uniform random index inside each segment (`rng` is a numpy
    Generator).  Test: the centre of each segment, e.g. total=32, frames=8 gives
    [2, 6, 10, ..., 30].  With fewer frames than requested, frames repeat in order.
    """
    _check_counts(num_total, num_frames)
    if not train:
        return segment_indices_for_view(num_total, num_frames, 0, 1)
    gen = _rng(rng)
    indices = []
    for k in range(num_frames):
        start = k * num_total // num_frames
        # Segments shorter than one frame collapse onto their start frame.
        end = max(start + 1, (k + 1) * num_total // num_frames)
        indices.append(int(gen.integers(start, end)))
    return indices


def segment_indices_for_view(num_total: int, num_frames: int, clip_index: int,
                             num_clips: int) -> list[int]:
    """Deterministic segment sampling for clip `clip_index` of `num_clips`.

    Clip i takes the point at fraction (i + 0.5) / num_clips of every segment,
    so the clips interleave evenly; num_clips=1 gives the segment centres.
    """
    _check_counts(num_total, num_frames)
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index must be in [0, {num_clips}), got {clip_index}")
    # floor((k + (i + 0.5) / n) * total / frames), kept in integers.
    denominator = 2 * num_frames * num_clips
    return [(2 * (k * num_clips + clip_index) + 1) * num_total // denominator
            for k in range(num_frames)]


def dense_indices(num_total: int, num_frames: int, stride: int, train: bool,
                  rng: np.random.Generator | None = None, clip_index: int = 0,
                  num_clips: int = 1) -> list[int]:
    """`num_frames` indices `stride` apart from a window of num_frames*stride frames.

    Train: the window starts uniformly at random.  Test: clip `clip_index` of
    `num_clips` starts at the centre of its equal share of the possible starts
    (one clip: the window is centred).  When the video is shorter than the
    window, the window starts at 0 and indices past the end are clamped to the
    last frame.  We clamp rather than loop because looping would jump back to
    the start and break temporal order, which temporal models rely on.
    """
    _check_counts(num_total, num_frames)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index must be in [0, {num_clips}), got {clip_index}")
    starts = num_total - num_frames * stride + 1  # how many start positions fit
    if starts <= 1:
        start = 0
    elif train:
        start = int(_rng(rng).integers(0, starts))
    else:
        start = (2 * clip_index + 1) * starts // (2 * num_clips)
    return [min(start + k * stride, num_total - 1) for k in range(num_frames)]


_VIEWS = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def parse_views(text: str) -> tuple[int, int]:
    """Parse "CLIPSxCROPS" (e.g. "1x1", "4x3") into (clips, crops).

    Crops must be 1 or 3, the spatial crop counts `spatial_crops` supports.
    """
    match = _VIEWS.fullmatch(str(text))
    if match is None:
        raise ValueError(f"--views must look like CLIPSxCROPS, e.g. 4x3; got {text!r}")
    clips, crops = int(match.group(1)), int(match.group(2))
    if clips < 1:
        raise ValueError(f"--views must look like CLIPSxCROPS, e.g. 4x3; got {text!r} "
                         f"(CLIPS must be >= 1)")
    if crops not in (1, 3):
        raise ValueError(f"--views crops must be 1 or 3, e.g. 4x3; got {text!r}")
    return clips, crops
