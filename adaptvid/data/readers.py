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

import numpy as np

from .reader_base import VideoReader, VideoReadError, reduced_size

__all__ = ["open_video", "available_backends", "VideoReader", "VideoReadError", "reduced_size"]

BACKENDS = ("decord", "pyav", "torchcodec")
# The module each backend needs; importing it is the availability test.
_MODULES = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec.decoders"}


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

    def __init__(self, path: str, num_threads: int = 1, short_side: int | None = None):
        import decord

        # decord scales while converting to RGB (FFmpeg's scale filter), but
        # needs the target size at open, so read the stored size from the
        # header first (PyAV reads only the header here; no frame is decoded).
        target = reduced_size(*_stored_size(path), short_side) if short_side else None
        size = {} if target is None else {"height": target[0], "width": target[1]}
        # A file decord cannot open makes it print C++ error text on fd 2 as
        # well as raise; open_video turns the exception into a VideoReadError
        # naming the file, so the native text is only noise (and, from
        # DataLoader workers, unattributed noise).
        with _native_stderr_silenced():
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads, **size)
        self._threads = num_threads
        self.short_side = short_side
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
                self._fallback = PyAVReader(self.path, self._threads, self.short_side)
        return self._fallback._decode_sorted(indices)


class PyAVReader(VideoReader):
    """Decodes from the start and keeps only the requested frames.

    No seeking: PyAV seeks land on keyframes and would need timestamp
    bookkeeping to find an exact frame index; for the short clips used in
    action recognition a linear decode is simple and exact.  Memory holds only
    the requested frames, never the whole video.
    """

    backend = "pyav"

    def __init__(self, path: str, num_threads: int = 1, short_side: int | None = None):
        import av

        self._threads = max(1, int(num_threads))
        self.short_side = short_side
        self._target: tuple[int, int] | None = None
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream in file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            count = stream.frames
            if count <= 0:
                # Containers such as mkv/webm often omit the frame count.
                count = sum(1 for _ in container.decode(stream))
            self._target = reduced_size(stream.height, stream.width, short_side)
        super().__init__(path, count, float(rate) if rate else 0.0)

    def _decode_sorted(self, indices):
        import av

        wanted = set(indices)
        last = indices[-1]
        # Scaling inside the RGB conversion (one swscale pass) costs less than
        # converting the full frame and resizing it afterwards.
        size = {} if self._target is None else {
            "height": self._target[0], "width": self._target[1], "interpolation": PYAV_INTERPOLATION}
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
                    frames.append(frame.to_ndarray(format="rgb24", **size))
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

    def __init__(self, path: str, num_threads: int = 1, short_side: int | None = None):
        from torchcodec.decoders import VideoDecoder

        self.short_side = short_side
        self._decoder = VideoDecoder(path, dimension_order="NHWC",
                                     num_ffmpeg_threads=num_threads, device="cpu")
        super().__init__(path, len(self._decoder), self._decoder.metadata.average_fps or 0.0)

    def _decode_sorted(self, indices):
        frames = self._decoder.get_frames_at(indices=indices).data
        target = reduced_size(*frames.shape[1:3], self.short_side)
        if target is not None:
            # No resize at decode here: resize after, so the size contract holds.
            from .transforms import resize

            frames = resize(frames.permute(0, 3, 1, 2), *target).permute(0, 2, 3, 1).contiguous()
        return frames.numpy()


# swscale's bilinear widens its filter when shrinking (antialiased, like the
# torch resize of the full frame).  Measured against full decode + torch resize
# on 2x and 4.5x reductions it came closest among AREA/BILINEAR/BICUBIC, and as
# close as decord's own scaler.
PYAV_INTERPOLATION = "BILINEAR"


def _stored_size(path: str) -> tuple[int, int]:
    """(height, width) of the first video stream, from the container header."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoReadError(path, "no video stream in file")
        stream = container.streams.video[0]
        return stream.height, stream.width


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


def open_video(path, backend: str | None = None, num_threads: int = 1, *,
               short_side: int | None = None, fps: float | None = None) -> VideoReader:
    """Open `path` with `backend` (None: decord if importable, else PyAV).

    A folder is read as a video of extracted frames (``img_00001.jpg`` ...,
    see ``frame_folder.py``) whatever `backend` says; `fps` is its frame rate
    (default 30; video files carry their own and ignore it).  `short_side`
    decodes frames with the shorter side scaled down to it (never up), at
    decode time where the backend supports it (decord, PyAV, JPEG frames),
    so a 1080p file read for a 224 crop is not converted at full size.

    Raises VideoReadError (naming the file) for missing, empty, or undecodable
    files; ImportError if the requested backend is not installed; ValueError for
    an unknown backend name or a `short_side` below 1.
    """
    if short_side is not None and int(short_side) < 1:
        raise ValueError(f"short_side must be a positive number of pixels or None, got {short_side!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        from .frame_folder import FrameFolderReader

        reader: VideoReader = FrameFolderReader(path, fps=fps, short_side=short_side)
        if len(reader) <= 0:
            raise VideoReadError(path, "the frame folder has no frames")
        return reader
    name = _choose_backend(backend)
    # Check the cheap, common failures first: decoders report them vaguely.
    if not os.path.exists(path):
        raise VideoReadError(path, "no such file",
                             "check the paths in the list file and --data-root")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "file is empty (0 bytes)",
                             "the download or transcode probably failed; re-download it "
                             "or remove it from the list")
    try:
        reader = _READERS[name](path, num_threads=num_threads, short_side=short_side)
    except VideoReadError:
        raise
    except Exception as exc:
        raise VideoReadError(path, f"cannot decode with {name}: {type(exc).__name__}: {exc}",
                             "the file may be truncated, corrupt or not a video; "
                             "inspect it with ffprobe or re-encode it with ffmpeg") from exc
    if len(reader) <= 0:
        raise VideoReadError(path, "the video has no frames")
    return reader
