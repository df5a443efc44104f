"""Video readers: one small interface over decord, PyAV and torchcodec.

Every reader returns RGB uint8 frames as a numpy array (T, H, W, 3), in the
order the caller asked for.  All failures surface as ``VideoReadError`` so a
dataset can skip a broken file with one ``except`` and a message that names it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import threading
from typing import Sequence

import numpy as np

BACKENDS = ("decord", "pyav", "torchcodec")
# The module each backend needs; importing it is the availability test.
_MODULES = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec.decoders"}


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


@functools.lru_cache(maxsize=None)
def _import_error(module: str) -> str | None:
    """Return None if `module` imports, else why not (cached: imports are slow)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # torchcodec raises RuntimeError when FFmpeg is missing
        return f"{type(exc).__name__}: {exc}"
    return None


def available_backends() -> list[str]:
    """Backends whose Python package imports on this machine, in preference order."""
    return [name for name in BACKENDS if _import_error(_MODULES[name]) is None]


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


# fd 2 is shared by the whole process, so the redirection below is counted:
# the first thread in points fd 2 at /dev/null, the last one out puts the real
# stderr back.  While any thread is inside, native or Python output written to
# stderr by *other* threads is lost too; the window is one decord open (a few
# ms).  DataLoader workers are separate processes with their own fd 2.
_silence_lock = threading.Lock()
_silence_depth = 0
_saved_stderr_fd: int | None = None


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send whatever C/C++ code writes to file descriptor 2 to /dev/null.

    decord (its dmlc LOG and FFmpeg's av_log) prints lines such as
    ``[..] video_reader.cc:83: ERROR opening: x.mp4, ...`` straight to fd 2
    when a file will not open; the Python exception that follows is what we
    report, naming the file.  sys.stderr cannot catch this: only the fd can.
    """
    global _silence_depth, _saved_stderr_fd
    with _silence_lock:
        if _silence_depth == 0:
            try:
                sys.stderr.flush()  # let pending Python output reach the real stderr
            except Exception:
                pass
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 at all (closed): nothing to protect
                saved = None
            if saved is not None:
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    try:
                        os.dup2(devnull, 2)
                    finally:
                        os.close(devnull)
                except OSError:
                    os.close(saved)
                    saved = None
            _saved_stderr_fd = saved
        _silence_depth += 1
    try:
        yield
    finally:
        with _silence_lock:
            _silence_depth -= 1
            if _silence_depth == 0 and _saved_stderr_fd is not None:
                try:
                    os.dup2(_saved_stderr_fd, 2)
                finally:
                    os.close(_saved_stderr_fd)
                    _saved_stderr_fd = None


class DecordReader(VideoReader):
    backend = "decord"

    def __init__(self, path: str, num_threads: int = 1):
        import decord

        # A file decord cannot open makes it print C++ error text on fd 2 as
        # well as raise; open_video turns the exception into a VideoReadError
        # naming the file, so the native text is only noise (and, from
        # DataLoader workers, unattributed noise).
        with _native_stderr_silenced():
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        self._threads = num_threads
        self._fallback: VideoReader | None = None
        super().__init__(path, len(self._vr), self._vr.get_avg_fps())

    def _decode_sorted(self, indices):
        if self._fallback is None:
            try:
                # Sorted indices let decord move forward through the file
                # instead of seeking back and forth.
                return self._vr.get_batch(indices).asnumpy()
            except Exception as exc:
                # decord 0.6 cannot copy out frames of a few small widths (16,
                # 24, 48 and 72 px seen), failing in DECORDArrayCopyFromTo.
                # PyAV decodes the same pixels, so hand the file over to it.
                if "DECORDArrayCopyFromTo" not in str(exc) or _import_error("av"):
                    raise
                self._fallback = PyAVReader(self.path, self._threads)
        return self._fallback._decode_sorted(indices)


class PyAVReader(VideoReader):
    """Decodes from the start and keeps only the requested frames.

    No seeking: PyAV seeks land on keyframes and would need timestamp
    bookkeeping to find an exact frame index; for the short clips used in
    action recognition a linear decode is simple and exact.  Memory holds only
    the requested frames, never the whole video.
    """

    backend = "pyav"

    def __init__(self, path: str, num_threads: int = 1):
        import av

        self._threads = max(1, int(num_threads))
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream in file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            count = stream.frames
            if count <= 0:
                # Containers such as mkv/webm often omit the frame count.
                count = sum(1 for _ in container.decode(stream))
        super().__init__(path, count, float(rate) if rate else 0.0)

    def _decode_sorted(self, indices):
        import av

        wanted = set(indices)
        last = indices[-1]
        frames = []
        seen = 0
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            if self._threads > 1:
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = self._threads
            for position, frame in enumerate(container.decode(stream)):
                seen = position + 1
                if position in wanted:
                    # rgb24 through FFmpeg's swscale, as decord does, so the two
                    # agree exactly (tests check plain and BT.709 full-range files).
                    frames.append(frame.to_ndarray(format="rgb24"))
                if position == last:
                    break
        if len(frames) != len(indices):
            raise VideoReadError(
                self.path, f"only {seen} frames decodable, but the container "
                f"claims {len(self)}",
                "the file is probably truncated; re-download or re-encode it")
        return np.stack(frames)


class TorchCodecReader(VideoReader):
    backend = "torchcodec"

    def __init__(self, path: str, num_threads: int = 1):
        from torchcodec.decoders import VideoDecoder

        self._decoder = VideoDecoder(path, dimension_order="NHWC",
                                     num_ffmpeg_threads=num_threads, device="cpu")
        super().__init__(path, len(self._decoder), self._decoder.metadata.average_fps or 0.0)

    def _decode_sorted(self, indices):
        return self._decoder.get_frames_at(indices=indices).data.numpy()


_READERS = {"decord": DecordReader, "pyav": PyAVReader, "torchcodec": TorchCodecReader}
_INSTALL = {
    "decord": "pip install decord (x86-64 wheels only)",
    "pyav": "pip install av",
    "torchcodec": "pip install 'adaptvid[torchcodec]'; it also needs a system FFmpeg "
                  "(4 to 7) on the library path",
}


def _choose_backend(backend: str | None) -> str:
    if backend is None:
        # decord is usually the faster random-access reader; PyAV always ships wheels.
        for name in ("decord", "pyav"):
            if _import_error(_MODULES[name]) is None:
                return name
        raise ImportError("no video backend available: install decord or av (pip install av)")
    if backend not in _READERS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {list(BACKENDS)}")
    why = _import_error(_MODULES[backend])
    if why is not None:
        raise ImportError(f"video backend {backend!r} is not usable ({why}); "
                          f"install it with: {_INSTALL[backend]}, or pick one of "
                          f"{available_backends()}")
    return backend


def open_video(path, backend: str | None = None, num_threads: int = 1) -> VideoReader:
    """Open `path` with `backend` (None: decord if importable, else PyAV).

    Raises VideoReadError (naming the file) for missing, empty, or undecodable
    files; ImportError if the requested backend is not installed; ValueError for
    an unknown backend name.
    """
    name = _choose_backend(backend)
    path = os.fspath(path)
    # Check the cheap, common failures first: decoders report them vaguely.
    if not os.path.exists(path):
        raise VideoReadError(path, "no such file",
                             "check the paths in the list file and --data-root")
    if os.path.isdir(path):
        raise VideoReadError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "file is empty (0 bytes)",
                             "the download or transcode probably failed; re-download it "
                             "or remove it from the list")
    try:
        reader = _READERS[name](path, num_threads=num_threads)
    except VideoReadError:
        raise
    except Exception as exc:
        raise VideoReadError(path, f"cannot decode with {name}: {type(exc).__name__}: {exc}",
                             "the file may be truncated, corrupt or not a video; "
                             "inspect it with ffprobe or re-encode it with ffmpeg") from exc
    if len(reader) <= 0:
        raise VideoReadError(path, "the video has no frames")
    return reader
