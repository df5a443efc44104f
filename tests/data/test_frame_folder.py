import av
import numpy as np
import pytest
from PIL import Image

from adaptvid.data import VideoReadError, open_video


def write_frames(folder, frames, template):
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / template.format(i + 1))
    return folder


@pytest.mark.parametrize("template", ["img_{:05d}.png", "{:05d}.png", "frame_{}.png"])
def test_png_folder_equals_frames_and_lossless_video(tmp_path, video_tools, template):
    pattern_frames, _ = video_tools
    frames = pattern_frames(12, 48, 64)
    folder = write_frames(tmp_path / "clip", frames, template)  # frame_{} : 1..12, sorted numerically
    reader = open_video(folder, fps=25)
    assert (len(reader), reader.fps, reader.backend) == (12, 25.0, "frames")
    np.testing.assert_array_equal(reader.get_frames(range(12)), frames)
    np.testing.assert_array_equal(reader.get_frames([11, 0, 11]), frames[[11, 0, 11]])
    assert open_video(folder).fps == 30.0
    # The same frames as a lossless RGB video (H.264 in RGB, qp 0): pixel-exact as well.
    video = str(tmp_path / "clip.mkv")
    with av.open(video, mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=25)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "rgb24"
        stream.options = {"qp": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    np.testing.assert_array_equal(open_video(video, "pyav").get_frames(range(12)), frames)


def test_flow_files_beside_rgb_frames_and_bad_folders(tmp_path, video_tools):
    pattern_frames, _ = video_tools
    frames = pattern_frames(4, 16, 16)
    folder = write_frames(tmp_path / "v", frames, "img_{:05d}.jpg")
    write_frames(folder, frames, "flow_x_{:05d}.jpg")
    assert [f.split("/")[-1] for f in open_video(folder).files][:2] == ["img_00001.jpg", "img_00002.jpg"]
    dup = write_frames(tmp_path / "dup", frames[:1], "img_{}.png")
    Image.fromarray(frames[1]).save(dup / "img_01.png")
    with pytest.raises(VideoReadError, match="both frame 1"):
        open_video(dup)
    mixed = write_frames(tmp_path / "mixed", frames[:2], "a{}.png")
    write_frames(mixed, frames[:2], "b{}.png")
    with pytest.raises(VideoReadError, match="several frame patterns"):
        open_video(mixed)


def test_reduced_loading_only_where_libjpeg_scales(tmp_path, video_tools):
    """short_side: a JPEG that libjpeg can decode at 1/2 scale comes back at the short side; one no DCT scale
    fits (1/2 would undershoot), and a PNG, come back at full size, untouched: a resize there would only
    add to the transform's own."""
    pattern_frames, _ = video_tools
    frames = pattern_frames(2, 96, 128)
    jpegs = write_frames(tmp_path / "jpg", frames, "img_{:05d}.jpg")
    assert open_video(jpegs, short_side=48).get_frames([0, 1]).shape == (2, 48, 64, 3)   # DCT 1/2
    assert open_video(jpegs, short_side=40).get_frames([0]).shape == (1, 40, 53, 3)      # DCT 1/2, then resized
    full = open_video(jpegs).get_frames([0, 1])
    np.testing.assert_array_equal(open_video(jpegs, short_side=72).get_frames([0, 1]), full)
    pngs = write_frames(tmp_path / "png", frames, "img_{:05d}.png")
    np.testing.assert_array_equal(open_video(pngs, short_side=48).get_frames([0, 1]), frames)
