import pickle

import numpy as np
import pytest

from adaptvid.data import VideoReadError, available_backends, open_video
from adaptvid.data.readers import _import_error

BOTH = [b for b in ("decord", "pyav") if b in available_backends()]
needs_both = pytest.mark.skipif(len(BOTH) < 2, reason="needs decord and PyAV")


def test_default_backend_prefers_decord(lossless_video):
    reader = open_video(lossless_video[0])
    assert reader.backend == ("decord" if "decord" in available_backends() else "pyav")


@needs_both
@pytest.mark.parametrize("fixture", ["lossless_video", "lossy_video", "mkv_video",
                                     "bt709_video"])
def test_decord_and_pyav_agree_frame_for_frame(fixture, request):
    path, source = request.getfixturevalue(fixture)
    dec, pav = open_video(path, "decord"), open_video(path, "pyav")
    assert len(dec) == len(pav) == len(source)
    assert dec.fps == pav.fps == 8.0
    everything = list(range(len(source)))
    a, b = dec.get_frames(everything), pav.get_frames(everything)
    assert a.dtype == b.dtype == np.uint8 and a.shape == source.shape
    # Both convert yuv420p -> rgb24 with FFmpeg's swscale: exact equality.
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - source).mean() < 4  # and it is the encoded content


@needs_both
@pytest.mark.parametrize("width", [48, 72])
def test_decord_falls_back_to_pyav_on_widths_it_cannot_copy(tmp_path, width, video_tools):
    pattern_frames, encode = video_tools
    path = encode(tmp_path / "narrow.mp4", pattern_frames(6, 32, width), options={"qp": "0"})
    reader = open_video(path, "decord")
    assert reader.backend == "decord"
    np.testing.assert_array_equal(reader.get_frames([5, 0, 5]),
                                  open_video(path, "pyav").get_frames([5, 0, 5]))


@pytest.mark.parametrize("backend", BOTH)
def test_frames_match_what_was_encoded(lossless_video, backend):
    path, source = lossless_video
    decoded = open_video(path, backend).get_frames(range(len(source))).astype(int)
    for i, frame in enumerate(decoded):
        errors = np.abs(frame[None] - source).mean(axis=(1, 2, 3))
        assert errors.argmin() == i  # the right frame, in the right place
        assert errors[i] < 2.0  # qp=0 is lossless in YUV; only rgb<->yuv rounding left


@pytest.mark.parametrize("backend", BOTH)
def test_pyav_counts_frames_when_container_does_not(mkv_video, backend):
    import av

    path, source = mkv_video
    with av.open(path) as container:
        assert container.streams.video[0].frames == 0  # mkv stores no count
    assert len(open_video(path, backend)) == len(source)


@pytest.mark.parametrize("backend", BOTH)
def test_get_frames_follows_requested_order_with_repeats(lossy_video, backend):
    path, source = lossy_video
    reader = open_video(path, backend)
    full = reader.get_frames(range(len(reader)))
    wanted = [30, 2, 30, 39, 0, 2, 17]
    np.testing.assert_array_equal(reader.get_frames(wanted), full[wanted])
    assert reader.get_frames([]).shape == (0, 62, 90, 3)


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("bad", [16, 100, -1])
def test_index_out_of_range_names_file(lossless_video, backend, bad):
    path, _ = lossless_video
    with pytest.raises(VideoReadError, match="out of range") as info:
        open_video(path, backend).get_frames([0, bad])
    assert path in str(info.value)


@pytest.mark.parametrize("backend", BOTH)
def test_missing_empty_and_broken_files(tmp_path, backend):
    missing = tmp_path / "nope.mp4"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    cases = [(missing, "no such file"), (empty, "empty \\(0 bytes\\)"),
             (tmp_path, "is a directory"), (junk, "cannot decode")]
    for path, reason in cases:
        with pytest.raises(VideoReadError, match=reason) as info:
            open_video(path, backend)
        assert str(path) in str(info.value)
        assert info.value.path == str(path)


def test_video_read_error_survives_pickling():
    error = pickle.loads(pickle.dumps(VideoReadError("/x.mp4", "file is empty", "redo it")))
    assert (error.path, error.reason, error.hint) == ("/x.mp4", "file is empty", "redo it")
    assert "/x.mp4" in str(error) and "redo it" in str(error)


def test_unknown_backend_is_a_value_error(lossless_video):
    with pytest.raises(ValueError, match="unknown video backend 'opencv'"):
        open_video(lossless_video[0], backend="opencv")


@pytest.mark.skipif(_import_error("torchcodec.decoders") is None, reason="torchcodec installed")
def test_missing_torchcodec_says_how_to_install(lossless_video):
    assert "torchcodec" not in available_backends()
    with pytest.raises(ImportError, match="pip install 'adaptvid\\[torchcodec\\]'"):
        open_video(lossless_video[0], backend="torchcodec")
