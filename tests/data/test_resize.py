import hashlib

import pytest

from adaptvid.data import open_video
from adaptvid.data.resize import FAILURES_FILE, resize_videos


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def tree(tmp_path, video_tools):
    """src/a/one.mp4 (64x48, 16 frames at 8 fps), src/b/two.webm-named H.264 mkv, src/bad.mp4 (junk)."""
    pattern_frames, encode = video_tools
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    encode(src / "a" / "one.mp4", pattern_frames(16, 48, 64))
    encode(src / "b" / "two.mkv", pattern_frames(10, 64, 48))  # portrait
    (src / "notes.txt").write_text("not a video")
    return src


def test_resize_tree_sizes_counts_and_resume(tree, tmp_path):
    dst = tmp_path / "dst"
    before = {p: digest(p) for p in tree.rglob("*") if p.is_file()}
    report = resize_videos(tree, dst, short_side=32, progress=False)
    assert (report.converted, report.skipped, report.failed) == (2, 0, [])
    one, two = open_video(dst / "a" / "one.mp4", "pyav"), open_video(dst / "b" / "two.mkv", "pyav")
    assert one.get_frames([0]).shape == (1, 32, 42, 3)  # 64x48 -> short side 32, even width
    assert two.get_frames([0]).shape == (1, 42, 32, 3)
    assert (len(one), len(two)) == (16, 10) and one.fps == 8.0
    assert not (dst / "notes.txt").exists() and not (dst / FAILURES_FILE).exists()
    assert not list(dst.rglob(".*partial*"))
    again = resize_videos(tree, dst, short_side=32, progress=False)
    assert (again.converted, again.skipped, again.failed) == (0, 2, [])
    assert {p: digest(p) for p in tree.rglob("*") if p.is_file()} == before  # sources untouched
    assert "0 converted, 2 already done" in again.summary() and again.exit_code == 0


def test_fps_and_workers(tree, tmp_path):
    report = resize_videos(tree, tmp_path / "dst", short_side=24, fps=4, workers=2, progress=False)
    assert report.converted == 2
    one = open_video(tmp_path / "dst" / "a" / "one.mp4", "pyav")
    assert len(one) == 8 and one.fps == 4.0  # 2 s at 8 fps -> 2 s at 4 fps


def test_corrupt_source_is_a_failure_by_file(tree, tmp_path):
    bad = tree / "bad.mp4"
    bad.write_bytes(b"\x00\x01junk" * 500)
    dst = tmp_path / "dst"
    report = resize_videos(tree, dst, short_side=32, progress=False)
    assert report.converted == 2 and [path for path, _ in report.failed] == [str(bad)]
    assert str(bad) in (dst / FAILURES_FILE).read_text() and str(bad) in report.summary()
    assert not (dst / "bad.mp4").exists() and not list(dst.rglob(".*partial*"))
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.mp4").write_bytes(b"junk")
    assert resize_videos(only_bad, tmp_path / "d2", progress=False).exit_code == 1


def test_refuses_overlapping_or_empty_trees(tree, tmp_path):
    for dst in (tree, tree / "out"):
        with pytest.raises(ValueError, match="overlaps the source"):
            resize_videos(tree, dst, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        resize_videos(tmp_path / "empty", tmp_path / "x", progress=False)
