"""Inputs a user hands us: resize interpolation, unreadable videos, list and class files."""

import logging
import os
import threading

import numpy as np
import pytest
import torch

from adaptvid.data import VideoReadError, VideoTransform, read_class_names, read_list_file
from adaptvid.data.transforms import (center_crop, random_resized_box, resize, short_side_resize,
                                      spatial_crops, to_tensor)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def textured(frames=3, height=37, width=53, seed=0) -> np.ndarray:
    """uint8 (T, H, W, 3): noise over stripes and a gradient, so every kernel shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 120 + 80 * np.sin(xx / 2.3) * np.cos(yy / 3.1) + xx
    noise = rng.integers(-40, 41, (frames, height, width, 3))
    return np.clip(base[None, :, :, None] + noise, 0, 255).astype(np.uint8)


# ---- 1. resize interpolation ------------------------------------------------------------------


@pytest.mark.parametrize("size", [(20, 28), (64, 90), (37, 20)])
def test_bicubic_resize_differs_from_bilinear_and_matches_torchvision(size):
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    video = to_tensor(textured())  # uint8 (T, 3, H, W)
    bicubic = resize(video, *size, interpolation="bicubic")
    bilinear = resize(video, *size, interpolation="bilinear")
    assert bicubic.dtype == bilinear.dtype == torch.uint8
    assert bicubic.shape == bilinear.shape == (3, 3, *size)
    assert (bicubic.int() - bilinear.int()).abs().max() > 2
    assert torch.equal(resize(video, *size), bilinear)  # the default is unchanged
    reference = TF.resize(video, list(size), interpolation=InterpolationMode.BICUBIC,
                          antialias=True)
    assert reference.dtype == torch.uint8
    assert (bicubic.int() - reference.int()).abs().max() <= 1
    floats = resize(video.float(), *size, interpolation="bicubic")
    assert floats.dtype == torch.float32 and floats.shape == bicubic.shape


def test_short_side_resize_passes_interpolation_on():
    video = to_tensor(textured(height=40, width=60))
    bicubic = short_side_resize(video, 24, interpolation="bicubic")
    assert bicubic.shape[-2:] == (24, 36)
    assert torch.equal(bicubic, resize(video, 24, 36, interpolation="bicubic"))
    assert not torch.equal(bicubic, short_side_resize(video, 24))


def test_unknown_interpolation_is_a_clear_error():
    video = to_tensor(textured())
    for call in (lambda: resize(video, 8, 8, interpolation="nearest"),
                 lambda: short_side_resize(video, 8, interpolation="BICUBIC"),
                 lambda: VideoTransform(16, MEAN, STD, train=False, interpolation="lanczos")):
        with pytest.raises(ValueError, match=r"interpolation must be one of \['bilinear', 'bicubic'\]"):
            call()


def test_video_transform_uses_its_interpolation_in_train_and_test():
    frames = textured(frames=4, height=40, width=56)
    video = to_tensor(frames)
    make = lambda train, mode: VideoTransform(24, MEAN, STD, train=train, short_side=28,  # noqa: E731
                                              interpolation=mode)
    train_bicubic, train_bilinear = make(True, "bicubic"), make(True, "bilinear")
    test_bicubic, test_bilinear = make(False, "bicubic"), make(False, "bilinear")

    assert train_bicubic.interpolation == "bicubic"
    assert "interpolation='bicubic'" in repr(train_bicubic)
    # The default stays out of the repr: it is part of feature-cache fingerprints.
    assert repr(test_bilinear) == "VideoTransform(size=24, train=False, short_side=28, hflip=False)"
    assert VideoTransform(24, MEAN, STD, train=True).interpolation == "bilinear"

    top, left, h, w = random_resized_box(40, 56, train_bicubic.scale, train_bicubic.ratio,
                                         np.random.default_rng(5))
    crop = resize(video[..., top:top + h, left:left + w], 24, 24, interpolation="bicubic")
    out = train_bicubic(frames, np.random.default_rng(5))
    assert torch.equal(out, train_bicubic.normalize(crop))
    assert not torch.equal(out, train_bilinear(frames, np.random.default_rng(5)))

    expected = center_crop(short_side_resize(video, 28, interpolation="bicubic"), 24)
    assert torch.equal(test_bicubic(frames), test_bicubic.normalize(expected))
    assert not torch.equal(test_bicubic(frames), test_bilinear(frames))

    views = test_bicubic.multi_crop(frames, 3)
    resized = short_side_resize(video, 28, interpolation="bicubic")
    for view, crop in zip(views, spatial_crops(resized, 24, 3)):
        assert torch.equal(view, test_bicubic.normalize(crop))
    assert not torch.equal(views[0], test_bilinear.multi_crop(frames, 3)[0])


# ---- 2. decord's native error output -----------------------------------------------------------


def _bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n", encoding="utf-8")
    return path  # "missing": never written


@pytest.mark.parametrize("kind", ["empty", "text", "missing"])
def test_decord_open_failure_is_our_error_and_fd2_stays_quiet(tmp_path, capfd, kind):
    pytest.importorskip("decord")
    from adaptvid.data import open_video
    from adaptvid.data.readers import DecordReader

    path = _bad_file(tmp_path, kind)
    capfd.readouterr()
    with pytest.raises(VideoReadError) as info:
        open_video(path, backend="decord")
    assert f"'{path}'" in str(info.value)
    # open_video catches empty and missing files before decord sees them;
    # the reader itself must be quiet too.
    with pytest.raises(Exception):
        DecordReader(str(path))
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    os.write(2, b"fd 2 is back\n")  # the real stderr is restored afterwards
    assert capfd.readouterr().err == "fd 2 is back\n"


def test_stderr_silencing_nests_and_is_shared_by_threads(capfd):
    from adaptvid.data.readers import _native_stderr_silenced

    capfd.readouterr()
    inside, release = threading.Event(), threading.Event()

    def hold():
        with _native_stderr_silenced():
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    assert inside.wait(5)
    with _native_stderr_silenced():
        with _native_stderr_silenced():
            os.write(2, b"hidden 1\n")
    os.write(2, b"hidden 2\n")  # the other thread is still inside
    release.set()
    worker.join(5)
    os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"


def test_decord_still_reads_a_good_video(tmp_path):
    pytest.importorskip("decord")
    pytest.importorskip("av")
    from adaptvid.data import open_video
    from adaptvid.data.demo import make_clip, write_video

    clip = make_clip(0, np.random.default_rng(0), num_frames=4, size=32)
    write_video(tmp_path / "ok.mp4", clip)
    reader = open_video(tmp_path / "ok.mp4", backend="decord")
    assert reader.backend == "decord" and len(reader) == 4
    # Same swscale conversion as PyAV: identical pixels (yuv420p, so not the source's).
    np.testing.assert_array_equal(reader.get_frames([3, 0]),
                                  open_video(tmp_path / "ok.mp4", backend="pyav").get_frames([3, 0]))


# ---- 3. list files and class files ------------------------------------------------------------


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def test_utf8_bom_is_stripped_from_list_and_class_files(tmp_path):
    lst = write_bytes(tmp_path / "l.txt", "\ufeffa/x.mp4 0\nb.mp4 1\n".encode("utf-8"))
    assert [s.path for s in read_list_file(lst)] == [os.path.join(tmp_path, "a/x.mp4"),
                                                     os.path.join(tmp_path, "b.mp4")]
    with_header = write_bytes(tmp_path / "h.csv", "\ufeffpath,label\nb.mp4,1\n".encode("utf-8"))
    assert [s.label for s in read_list_file(with_header)] == [1]
    names = write_bytes(tmp_path / "c.txt", "\ufeffcat\ndog\n".encode("utf-8"))
    assert read_class_names(names) == ["cat", "dog"]


def test_non_utf8_files_name_file_and_line(tmp_path):
    lst = write_bytes(tmp_path / "l.txt", "a.mp4 0\n# note\ncaf\u00e9.mp4 1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"l\.txt:3: .*not valid UTF-8.*save it as UTF-8"):
        read_list_file(lst)
    names = write_bytes(tmp_path / "c.txt", "cat\nk\u00f6ln\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"c\.txt:2: .*save it as UTF-8"):
        read_class_names(names)
    utf16 = write_bytes(tmp_path / "u.txt", "a.mp4 0\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"u\.txt: .*UTF-16.*save it as UTF-8"):
        read_list_file(utf16)


@pytest.mark.parametrize("header", ["path,label", "Video Label", "filename, class_id",
                                    '"path","label"', "youtube_id category", "CLIP\tTarget",
                                    "file class", "name,category"])
def test_a_literal_column_header_is_skipped(tmp_path, header):
    lst = write_bytes(tmp_path / "l.txt", f"# comment\n{header}\nv.mp4 2\n".encode())
    assert [s.label for s in read_list_file(lst)] == [2]


@pytest.mark.parametrize("first", ["x.mp4 growing", "path growing", "x.mp4 label",
                                   "x.mp4,square growing", "video 3.0"])
def test_a_first_line_that_is_not_a_header_is_an_error(tmp_path, first):
    lst = write_bytes(tmp_path / "l.txt", f"{first}\nv.mp4 2\n".encode())
    with pytest.raises(ValueError, match=r"l\.txt:1: .*integer") as info:
        read_list_file(lst)
    if any(c.isalpha() for c in first.replace(",", " ").split()[-1]):
        assert "--classes" in str(info.value)


@pytest.mark.parametrize("relative", ["../other/x.mp4", "a/../../x.mp4", ".."])
def test_paths_escaping_the_data_root_are_refused(tmp_path, relative):
    lst = write_bytes(tmp_path / "l.txt", f"ok.mp4 0\n{relative} 1\n".encode())
    with pytest.raises(ValueError, match=r"l\.txt:2: .*outside the data root") as info:
        read_list_file(lst, tmp_path / "data")
    assert "allow_outside_root=True" in str(info.value)
    assert "--allow-outside-root" in str(info.value)
    # Relative to the list's own folder (no --data-root), ../ is how a list in a sub-folder names its videos.
    assert read_list_file(lst)[1].path == os.path.join(tmp_path, relative)
    samples = read_list_file(lst, tmp_path / "data", allow_outside_root=True)
    assert samples[1].path == os.path.join(tmp_path / "data", relative)


def test_paths_inside_the_root_and_absolute_paths_are_accepted(tmp_path):
    lst = write_bytes(tmp_path / "l.txt", b"a/../b.mp4 0\n./c/d.mp4 1\n/abs/e.mp4 2\n")
    samples = read_list_file(lst, "/data")
    assert [s.path for s in samples] == ["/data/a/../b.mp4", "/data/./c/d.mp4", "/abs/e.mp4"]


def test_duplicates_are_kept_with_one_warning(tmp_path, caplog):
    lst = write_bytes(tmp_path / "l.txt", b"a.mp4 0\nb.mp4 1\n# c\n./a.mp4 0\nb.mp4 1\nb.mp4 1\n")
    with caplog.at_level(logging.WARNING, logger="adaptvid.data"):
        samples = read_list_file(lst)
    assert len(samples) == 5
    records = [r for r in caplog.records if r.name == "adaptvid.data"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "3 duplicate entries" in message and f"{lst}:4" in message

    caplog.clear()
    unique = write_bytes(tmp_path / "u.txt", b"a.mp4 0\nb.mp4 1\n")
    with caplog.at_level(logging.WARNING, logger="adaptvid.data"):
        read_list_file(unique)
    assert not [r for r in caplog.records if r.name == "adaptvid.data"]
