"""Tiny videos generated on the fly with PyAV, so the data tests run offline."""

import av
import numpy as np
import pytest


def pattern_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth frames that differ clearly from each other: the red level rises
    with i and frame i has a white band at rows 4i..4i+3 (wrapping), so a
    mis-ordered or off-by-one frame is easy to spot.  Smooth content survives
    yuv420p chroma subsampling almost unchanged."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 2] = np.linspace(0, 200, width, dtype=np.uint8)[None, None, :]
    for i in range(num_frames):
        frames[i, ..., 0] = 10 + 240 * i // max(1, num_frames - 1)
        top = (4 * i) % (height - 4)
        frames[i, top:top + 4] = 255
    return frames


def encode(path, frames, codec="libx264", options=None, fps=8, colorspace=None,
           color_range=None):
    """Write RGB frames as yuv420p video; colorspace/color_range (FFmpeg enum
    values, e.g. 1 = BT.709, 2 = full range) tag the stream and the conversion."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = options or {}
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
            stream.codec_context.color_range = color_range
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if colorspace is not None:
                frame = frame.reformat(format="yuv420p", dst_colorspace=colorspace,
                                       dst_color_range=color_range)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.fixture(scope="session")
def video_tools():
    """(pattern_frames, encode) for tests that need a custom video; a fixture
    because conftest modules are not meant to be imported."""
    return pattern_frames, encode


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def lossless_video(video_dir):
    """64x64, 16 frames, H.264 qp=0 (lossless in YUV): (path, source frames)."""
    frames = pattern_frames(16, 64, 64)
    return encode(video_dir / "lossless.mp4", frames, options={"qp": "0"}), frames


@pytest.fixture(scope="session")
def lossy_video(video_dir):
    """Odd size (90x62), 40 frames, default x264 settings (B-frames, crf 23)."""
    frames = pattern_frames(40, 62, 90)
    return encode(video_dir / "lossy.mp4", frames, options={"crf": "23"}), frames


@pytest.fixture(scope="session")
def bt709_video(video_dir):
    """HD-style colour tags: BT.709 matrix, full range."""
    frames = pattern_frames(8, 48, 64)
    path = encode(video_dir / "bt709.mp4", frames, options={"crf": "18"}, colorspace=1,
                  color_range=2)
    return path, frames


@pytest.fixture(scope="session")
def mkv_video(video_dir):
    """Matroska stores no frame count, so PyAV has to count by decoding."""
    frames = pattern_frames(12, 48, 64)
    return encode(video_dir / "clip.mkv", frames, options={"qp": "0"}), frames
