import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from adaptvid.data import make_demo_data, open_video, read_class_names, read_list_file
from adaptvid.data.demo import OBJECT_MIN, demo_class_names, make_clip, write_video

SMALL = dict(videos_per_class_train=3, videos_per_class_val=2, num_frames=16, size=64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=0, **SMALL)


def by_label(list_path):
    groups = {}
    for sample in read_list_file(list_path):
        groups.setdefault(sample.label, []).append(sample.path)
    return groups


def test_files_lists_and_balanced_labels(demo):
    assert read_class_names(demo["classes"]) == demo_class_names()
    assert demo_class_names()[:2] == ["square growing", "square shrinking"]
    for split, per_class in (("train", 3), ("val", 2)):
        samples = read_list_file(demo[split])
        assert Counter(s.label for s in samples) == {label: per_class for label in range(6)}
        for sample in samples:
            assert Path(sample.path).is_file() and Path(sample.path).stat().st_size > 0
            reader = open_video(sample.path)
            assert len(reader) == 16 and reader.fps == 8.0
    train_paths = {s.path for s in read_list_file(demo["train"])}
    assert not train_paths & {s.path for s in read_list_file(demo["val"])}


def object_area(frames):
    """Pixels of the bright object per frame (the background stays darker)."""
    return (frames.max(axis=-1) > (OBJECT_MIN - 30)).sum(axis=(1, 2))


def test_classes_show_the_named_change_over_time(demo):
    videos = by_label(demo["train"])
    for path in videos[0]:  # square growing
        area = object_area(open_video(path).get_frames(range(16)))
        assert np.all(np.diff(area) >= 0) and area[-1] > 4 * area[0]
    for path in videos[1]:  # square shrinking
        area = object_area(open_video(path).get_frames(range(16)))
        assert np.all(np.diff(area) <= 0) and area[0] > 4 * area[-1]
    for label, sign in ((2, 1), (3, -1)):  # disc brightening / fading
        for path in videos[label]:
            brightness = open_video(path).get_frames(range(16)).astype(float).mean(axis=(1, 2, 3))
            assert sign * (brightness[-1] - brightness[0]) > 5
    for label, sign in ((4, 1), (5, -1)):  # red turning blue / blue turning red
        for path in videos[label]:
            frames = open_video(path).get_frames([0, 15]).astype(float)
            blue_minus_red = (frames[..., 2] - frames[..., 0]).mean(axis=(1, 2))
            assert sign * (blue_minus_red[1] - blue_minus_red[0]) > 20


@pytest.mark.parametrize("pair", [0, 1, 2])
def test_mirror_class_is_the_same_clip_reversed(pair, tmp_path):
    forward = make_clip(2 * pair, np.random.default_rng(11), num_frames=12, size=48)
    mirrored = make_clip(2 * pair + 1, np.random.default_rng(11), num_frames=12, size=48)
    np.testing.assert_array_equal(mirrored, forward[::-1])
    # Lossless coding: decoding gives the same frames whichever order they were
    # encoded in, so an order-blind model cannot use codec artefacts either.
    write_video(tmp_path / "f.mp4", forward)
    write_video(tmp_path / "r.mp4", mirrored)
    a = open_video(tmp_path / "f.mp4").get_frames(range(12))
    b = open_video(tmp_path / "r.mp4").get_frames(range(12))
    np.testing.assert_array_equal(a, b[::-1])


def digest(root):
    files = sorted(p for p in Path(root).rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_same_bytes_other_seed_other_videos(demo, tmp_path):
    again = make_demo_data(tmp_path / "again", seed=0, **SMALL)
    assert digest(again["root"]) == digest(demo["root"])
    other = make_demo_data(tmp_path / "other", seed=1, **SMALL)
    first = "train/square_growing/000.mp4"
    assert digest(other["root"])[first] != digest(demo["root"])[first]


def test_module_entry_point(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "adaptvid.data.demo", str(out), "--train-per-class", "1",
         "--val-per-class", "1", "--num-frames", "8", "--size", "32"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr
    assert len(read_list_file(out / "train.txt")) == 6
    assert (out / "classes.txt").read_text().split("\n")[0] == "square growing"


@pytest.mark.parametrize("bad", [dict(size=81), dict(size=8), dict(num_frames=1)])
def test_bad_demo_settings_are_rejected_early(tmp_path, bad):
    with pytest.raises(ValueError):
        make_demo_data(tmp_path, **bad)
    assert not (tmp_path / "train.txt").exists()
