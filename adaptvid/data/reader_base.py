"""The reader interface every video source implements (files and frame folders).

Kept apart from ``readers.py`` so the frame-folder reader can build on it
without importing the module that dispatches to it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class VideoReadError(Exception):
    """A video could not be opened or decoded.

    The message always names the file and the reason, plus a fix hint when
    there is an obvious one.  ``path``, ``reason`` and ``hint`` stay available
    as attributes for callers that want to count or group failures.
    """

    def __init__(self, path, reason: str, hint: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        message = f"cannot read video '{self.path}': {reason}"
        if hint:
            message += f" (hint: {hint})"
        super().__init__(message)

    def __reduce__(self):
        # Default exception pickling replays __init__ with the message only,
        # which breaks our 3-argument signature when errors cross processes.
        return (type(self), (self.path, self.reason, self.hint))


def reduced_size(height: int, width: int, short_side: int | None) -> tuple[int, int] | None:
    """(height, width) with the shorter side scaled to `short_side`, or None to keep the size.

    Never enlarges: a frame already at or below `short_side` keeps its size, so
    reduced-size decoding only ever saves work.  The longer side is rounded to
    the nearest pixel, as ``transforms.short_side_resize`` does.
    """
    if short_side is None or min(height, width) <= short_side:
        return None
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


class VideoReader:
    """Common part of all readers: metadata, index checks, output ordering."""

    backend = "base"

    def __init__(self, path: str, num_frames: int, fps: float):
        self.path = path
        self._num_frames = int(num_frames)
        self.fps = float(fps)

    def __len__(self) -> int:
        return self._num_frames

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.path}', frames={len(self)}, fps={self.fps:g})"

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` as uint8 (T, H, W, 3) RGB, in the given order.

        Indices may repeat and be unsorted; each distinct frame is decoded once.
        """
        wanted = [int(i) for i in indices]
        if not wanted:
            # Keep the (0, H, W, 3) shape contract; frame size needs one decode.
            height, width = self.get_frames([0]).shape[1:3]
            return np.zeros((0, height, width, 3), np.uint8)
        bad = [i for i in wanted if not 0 <= i < len(self)]
        if bad:
            raise VideoReadError(
                self.path, f"frame index {bad[0]} out of range: the video has "
                f"{len(self)} frames (valid 0..{len(self) - 1})")
        unique = sorted(set(wanted))
        try:
            decoded = self._decode_sorted(unique)
        except VideoReadError:
            raise
        except Exception as exc:
            raise VideoReadError(self.path, f"cannot decode: {type(exc).__name__}: {exc}",
                                 "the file may be truncated or corrupt") from exc
        if decoded.shape[0] != len(unique) or decoded.dtype != np.uint8:
            raise VideoReadError(self.path, f"decoder returned {decoded.shape[0]} frames "
                                 f"of {decoded.dtype} for {len(unique)} requested")
        position = {index: row for row, index in enumerate(unique)}
        return decoded[[position[i] for i in wanted]]

    def _decode_sorted(self, indices: list[int]) -> np.ndarray:
        """Decode the sorted, distinct `indices` into a (len, H, W, 3) array."""
        raise NotImplementedError
