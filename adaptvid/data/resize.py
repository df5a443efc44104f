"""Re-encode a tree of videos at a smaller size (and optionally another fps).

Decoding is what bounds CPU data loading, and its cost grows with the pixel
count: a 1080p file re-encoded at short side 320 decodes many times faster and
loses nothing a 224 crop would keep.  The output is H.264 (yuv420p) written
with PyAV's bundled FFmpeg, so no system FFmpeg is needed; audio is dropped.

Safe to interrupt and re-run: each output is written to a temporary name in
its own folder and renamed into place only when complete, so an existing
output is always a finished one and is skipped on the next run.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from fractions import Fraction
from pathlib import Path

from .readers import reduced_size

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".flv", ".mpg", ".mpeg",
                    ".wmv", ".3gp", ".ogv")
# Containers that can hold H.264 keep their extension (list files stay valid);
# the others (webm, ogv, ...) are written as .mp4.
_H264_CONTAINERS = (".mp4", ".mkv", ".mov", ".m4v", ".avi")
FAILURES_FILE = "failures.txt"


@dataclasses.dataclass
class ResizeReport:
    """What ``resize_videos`` did: counts, and the failures with their reasons."""

    dst: str
    converted: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    renamed: int = 0  # outputs written as .mp4 because the source container cannot hold H.264

    @property
    def exit_code(self) -> int:
        """1 when videos were attempted and none converted (the CLI's exit status), else 0."""
        return 1 if self.failed and not self.converted else 0

    def summary(self) -> str:
        lines = [f"{self.converted} converted, {self.skipped} already done (skipped), "
                 f"{len(self.failed)} failed -> {self.dst}"]
        if self.renamed:
            lines.append(f"{self.renamed} outputs use .mp4 instead of their source extension "
                         f"(that container cannot hold H.264): update the list files")
        if self.failed:
            lines.append(f"failures (also in {os.path.join(self.dst, FAILURES_FILE)}):")
            lines += [f"  {path}: {reason}" for path, reason in self.failed[:20]]
            if len(self.failed) > 20:
                lines.append(f"  ... and {len(self.failed) - 20} more")
        return "\n".join(lines)


def output_path(source: Path, src: Path, dst: Path) -> Path:
    """Where `source` (under `src`) goes under `dst`: same relative path, H.264-capable extension."""
    relative = source.relative_to(src)
    if relative.suffix.lower() not in _H264_CONTAINERS:
        relative = relative.with_suffix(".mp4")
    return dst / relative


def _check_roots(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise ValueError(f"source folder '{src}' does not exist or is not a folder")
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"destination '{dst}' overlaps the source '{src}': the sources are "
                         f"never modified, so choose a folder outside the source tree")


def _even(value: int) -> int:
    # yuv420p halves the chroma planes: H.264 needs even width and height.
    return max(2, value - value % 2)


def _resample(frames, fps: float, source_fps: float):
    """Yield decoded frames at a constant `fps`: each tick takes the frame on screen at that time.

    The video lasts until one source frame period after its last frame, so
    2 s of 8 fps become 8 frames at 4 fps and 32 at 16 fps.
    """
    tick = 0
    previous = None
    for frame in frames:
        time = float(frame.time) if frame.time is not None else 0.0
        if previous is None:
            start, previous = time, frame
            continue
        while start + tick / fps < time:
            yield previous
            tick += 1
        previous = frame
    if previous is not None:
        end = time + 1.0 / source_fps
        while start + tick / fps < end - 1e-9:
            yield previous
            tick += 1


def convert_video(source: str, target: str, short_side: int, fps: float | None = None,
                  crf: int = 23, preset: str = "veryfast") -> None:
    """Re-encode one file to H.264 at `short_side` (never enlarged) and optionally `fps`.

    Writes `target` atomically (temporary name in the same folder, then
    ``os.replace``); on any error the temporary file is removed and the error
    propagates.
    """
    import av

    folder, name = os.path.split(target)
    os.makedirs(folder or ".", exist_ok=True)
    stem, ext = os.path.splitext(name)
    # Left-overs of a run that was killed before it could clean up.
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(stem)}.partial-*{ext}")):
        os.remove(stale)
    temporary = os.path.join(folder, f".{stem}.partial-{os.getpid()}{ext}")
    try:
        with av.open(source) as inp:
            if not inp.streams.video:
                raise ValueError("no video stream in file")
            in_stream = inp.streams.video[0]
            in_stream.thread_type = "AUTO"
            height, width = in_stream.height, in_stream.width
            if not height or not width:
                raise ValueError("the video stream has no frame size")
            height, width = reduced_size(height, width, short_side) or (height, width)
            source_rate = float(in_stream.average_rate or in_stream.guessed_rate or 30)
            rate = fps or source_rate
            frames = inp.decode(in_stream)
            if fps:
                frames = _resample(frames, float(fps), source_rate)
            written = 0
            with av.open(temporary, mode="w") as out:
                stream = out.add_stream("libx264", rate=Fraction(rate).limit_denominator(1001))
                stream.width, stream.height = _even(width), _even(height)
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
                for frame in frames:
                    small = frame.reformat(width=stream.width, height=stream.height,
                                           format="yuv420p", interpolation="BILINEAR")
                    # Renumber at the output rate (resampling repeats and drops frames).
                    small.pts, small.time_base = written, 1 / stream.codec_context.framerate
                    for packet in stream.encode(small):
                        out.mux(packet)
                    written += 1
                for packet in stream.encode():
                    out.mux(packet)
            if written == 0:
                raise ValueError("no frame could be decoded")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _convert_one(job):
    source, target, short_side, fps = job
    try:
        convert_video(source, target, short_side, fps)
    except Exception as exc:  # every failure is reported by file, never raised out of the pool
        return source, f"{type(exc).__name__}: {exc}"
    return source, None


def find_videos(src: Path) -> list[Path]:
    """Video files under `src`, by extension, in a stable (sorted) order."""
    return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def resize_videos(src, dst, short_side: int = 320, fps: float | None = None, workers: int = 1,
                  overwrite: bool = False, progress: bool = True) -> ResizeReport:
    """Re-encode every video under `src` into the same relative path under `dst`.

    `short_side`: the shorter side of the output (never enlarged).  `fps`:
    output frame rate (None keeps the source's).  `workers`: processes that
    convert in parallel.  Outputs that exist are skipped unless `overwrite`.
    Raises ValueError when `dst` overlaps `src` or `src` holds no video.
    Failures are collected in the report and written to ``dst/failures.txt``.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_roots(src, dst)
    if int(short_side) < 2:
        raise ValueError(f"short_side must be at least 2 pixels, got {short_side}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    sources = find_videos(src)
    if not sources:
        raise ValueError(f"no video files under '{src}' (extensions: {', '.join(VIDEO_EXTENSIONS)})")
    report = ResizeReport(dst=str(dst))
    jobs = []
    for source in sources:
        target = output_path(source, src, dst)
        if target.suffix != source.suffix:
            report.renamed += 1
        if target.exists() and not overwrite:
            report.skipped += 1
            continue
        jobs.append((str(source), str(target), int(short_side), fps))

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="resize", unit="video", disable=not progress)

    def record(result):
        source, reason = result
        if reason is None:
            report.converted += 1
        else:
            report.failed.append((source, reason))
        bar.update(1)

    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                record(_convert_one(job))
        else:
            with ProcessPoolExecutor(max_workers=int(workers)) as pool:
                for future in as_completed([pool.submit(_convert_one, job) for job in jobs]):
                    record(future.result())
    finally:
        bar.close()
    report.failed.sort()
    failures = dst / FAILURES_FILE
    if report.failed:
        dst.mkdir(parents=True, exist_ok=True)
        failures.write_text("".join(f"{path}\t{reason}\n" for path, reason in report.failed))
    elif failures.exists():
        failures.unlink()  # a previous run's list would now be stale
    return report
