"""Evaluation protocols: seeded K-shot lists, base/novel class halves, harmonic mean, re-pointing at new classes."""
from collections import Counter
from pathlib import Path

import pytest
import torch

import adaptvid
from adaptvid.cli import main
from adaptvid.data import read_class_names, read_list_file
from adaptvid.data.splits import (ListEntry, base_novel_split, base_to_novel_report, few_shot, harmonic_mean, mean_std,
                                read_list_entries, split_classes)
from adaptvid import set_classes
from conftest import tiny_video

NAMES = [f"action {i}" for i in range(5)]


@pytest.fixture
def dataset(tmp_path):
    """A list of 5 classes with 20, 19, 18, 17, 16 videos, interleaved, and its class file."""
    lines = [f"videos/c{c}/v{i:02d}.mp4 {c}" for i in range(20) for c in range(5) if i < 20 - c]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text("".join(f"videos/c{c}/val.mp4 {c}\n" for c in range(5)))
    (tmp_path / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return tmp_path


@pytest.mark.parametrize("shots", [2, 4, 8, 16])
def test_exactly_k_per_class_and_deterministic_by_seed(dataset, shots):
    entries = read_list_entries(dataset / "train.txt")
    split = few_shot(entries, shots, seed=1)
    assert Counter(e.label for e in split) == {c: shots for c in range(5)}
    assert set(split) <= set(entries) and len(set(split)) == len(split)
    assert split == few_shot(entries, shots, seed=1)
    assert split != few_shot(entries, shots, seed=2)
    assert [entries.index(e) for e in split] == sorted(entries.index(e) for e in split)  # list order kept


def test_a_class_with_fewer_videos_is_named(dataset):
    entries = read_list_entries(dataset / "train.txt")
    with pytest.raises(ValueError, match=r"class 4 \('action 4'\) has only 16 video\(s\), fewer than 17"):
        few_shot(entries, 17, class_names=NAMES)
    kept = few_shot(entries, 17, allow_fewer=True)
    assert Counter(e.label for e in kept) == {0: 17, 1: 17, 2: 17, 3: 17, 4: 16}
    with pytest.raises(ValueError, match="class 5 \\('extra'\\) has no video"):
        few_shot(entries, 2, class_names=NAMES + ["extra"])


def test_split_few_shot_command_writes_a_readable_list(dataset, capsys):
    out = dataset / "train_4shot.txt"
    assert main(["split", "few-shot", "--list", str(dataset / "train.txt"), "--shots", "4", "--seed", "3",
                 "--output", str(out)]) == 0
    samples = read_list_file(out)
    assert Counter(s.label for s in samples) == {c: 4 for c in range(5)}
    assert all(s.path.startswith(str(dataset / "videos")) for s in samples)   # paths as in the input list
    assert main(["split", "few-shot", "--list", str(dataset / "train.txt"), "--shots", "18",
                 "--output", str(out)]) == 2
    assert "has only 17 video(s)" in capsys.readouterr().err


def test_class_halves_by_index_frequency_and_seed():
    assert split_classes(5) == ([0, 1, 2], [3, 4])
    counts = {0: 3, 1: 9, 2: 9, 3: 1, 4: 5}
    assert split_classes(5, "frequency", counts=counts) == ([1, 2, 4], [0, 3])
    random_split = split_classes(400, "random", seed=1)
    assert random_split == split_classes(400, "random", seed=1) != split_classes(400, "random", seed=2)
    assert sorted(random_split[0] + random_split[1]) == list(range(400)) and len(random_split[0]) == 200
    with pytest.raises(ValueError, match="needs the training videos"):
        split_classes(5, "frequency")


def test_split_few_shot_output_elsewhere_resolves_from_its_own_folder(dataset, tmp_path):
    """Before: the written list kept the source list's relative paths and resolved nowhere."""
    out = tmp_path / "elsewhere" / "deeper" / "train_2shot.txt"
    assert main(["split", "few-shot", "--list", str(dataset / "train.txt"), "--shots", "2", "--output", str(out)]) == 0
    written = read_list_file(out)
    videos = (dataset / "videos").resolve()
    assert len(written) == 10 and all(Path(s.path).resolve().is_relative_to(videos) for s in written)


def test_split_base_novel_command_writes_classes_and_relabelled_lists(dataset):
    out = dataset / "b2n"
    assert main(["split", "base-novel", "--classes", str(dataset / "classes.txt"), "--output-dir", str(out),
                 "--list", str(dataset / "train.txt"), str(dataset / "val.txt"), "--shots", "2", "--seed", "1"]) == 0
    assert read_class_names(out / "base_classes.txt") == NAMES[:3]
    assert read_class_names(out / "novel_classes.txt") == NAMES[3:]
    novel_val = read_list_entries(out / "novel_val.txt")
    # paths rewritten to resolve from the written list's own folder
    assert novel_val == [ListEntry("../videos/c3/val.mp4", 0), ListEntry("../videos/c4/val.mp4", 1)]
    assert [Path(s.path).resolve() for s in read_list_file(out / "novel_val.txt")] == [
        (dataset / "videos/c3/val.mp4").resolve(), (dataset / "videos/c4/val.mp4").resolve()]
    assert Counter(e.label for e in read_list_entries(out / "base_train.txt")) == {0: 20, 1: 19, 2: 18}
    few = read_list_entries(out / "base_train_2shot_seed1.txt")
    assert Counter(e.label for e in few) == {0: 2, 1: 2, 2: 2}
    by_frequency = base_novel_split(dataset / "classes.txt", dataset / "f", [dataset / "train.txt"], order="frequency")
    assert read_class_names(by_frequency["base_classes"]) == NAMES[:3]   # classes 0-2 have the most videos


def test_harmonic_mean_and_report():
    assert harmonic_mean(80, 60) == pytest.approx(68.57142857142857, abs=1e-12)
    assert harmonic_mean(0, 0) == 0.0
    report = base_to_novel_report({"top1": 80.0}, {"top1": 60.0})
    assert report == {"base": 80.0, "novel": 60.0, "hm": pytest.approx(68.5714285714)}
    seeds = base_to_novel_report([76.0, 77.0, 76.2], [61.0, 61.5, 60.8])
    assert seeds["base"] == pytest.approx(76.4) and seeds["novel"] == pytest.approx(61.1)
    assert seeds["hm"] == pytest.approx(harmonic_mean(76.4, 61.1)) and len(seeds["seeds"]) == 3
    with pytest.raises(ValueError, match="one of each per seed"):
        base_to_novel_report([1, 2], [3])
    mean, std = mean_std([83.0, 84.0, 85.0])
    assert mean == pytest.approx(84.0) and std == pytest.approx((2 / 3) ** 0.5)


@pytest.mark.parametrize("method", ["vifi-clip", "open-vclip"])
def test_set_classes_rebuilds_the_text_classifier_for_new_names(method):
    model = adaptvid.build_model("tiny-clip", method, class_names=NAMES[:3], num_frames=4).eval()
    head_type, templates = type(model.head), model.head.templates
    other = ["juggling balls", "riding a horse"]
    fresh = adaptvid.build_model("tiny-clip", method, class_names=other, num_frames=4).eval()
    with torch.no_grad():
        model(tiny_video())  # fills the class-embedding cache for the old names
        same = set_classes(model, other)
        assert same is model and model.class_names == other and model.num_classes == 2
        assert type(model.head) is head_type and model.head.templates == templates
        assert torch.allclose(model(tiny_video()), fresh(tiny_video()), atol=1e-6)
