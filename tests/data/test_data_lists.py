import os

import pytest

from adaptvid.data import VideoSample, folder_dataset, read_class_names, read_list_file


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_whitespace_list_resolves_paths_next_to_the_list_file(tmp_path):
    lst = write(tmp_path / "train.txt", "a/x.mp4 0\n\n# a comment\nb/y.mp4\t3\n  c/z.mp4   1  \n")
    samples = read_list_file(lst)
    assert samples == [VideoSample(os.path.join(tmp_path, "a/x.mp4"), 0),
                       VideoSample(os.path.join(tmp_path, "b/y.mp4"), 3),
                       VideoSample(os.path.join(tmp_path, "c/z.mp4"), 1)]


def test_comma_list_with_header_spaces_and_data_root(tmp_path):
    lst = write(tmp_path / "val.csv", "path,label\nmy videos/clip one.mp4, 2\nb.mp4,0\n")
    samples = read_list_file(lst, data_root="/data/k400")
    assert samples == [VideoSample("/data/k400/my videos/clip one.mp4", 2),
                       VideoSample("/data/k400/b.mp4", 0)]


def test_header_after_comments_is_skipped_but_not_later(tmp_path):
    assert len(read_list_file(write(tmp_path / "a.txt", "# c\npath label\nx.mp4 1\n"))) == 1
    with pytest.raises(ValueError, match=r"b.txt:2:"):
        read_list_file(write(tmp_path / "b.txt", "x.mp4 1\npath label\n"))


def test_absolute_paths_are_kept(tmp_path):
    samples = read_list_file(write(tmp_path / "l.txt", "/abs/v.mp4 4\n"), data_root="/other")
    assert samples[0].path == "/abs/v.mp4"


@pytest.mark.parametrize("bad_line", ["just_a_path.mp4", "v.mp4 -1", "v.mp4 3.0",
                                      "v.mp4 120 5", "v.mp4 cat", ",3", "v.mp4,"])
def test_malformed_line_names_file_line_and_fix(tmp_path, bad_line):
    lst = write(tmp_path / "list.txt", f"ok.mp4 0\n# note\n{bad_line}\n")
    with pytest.raises(ValueError) as info:
        read_list_file(lst)
    assert str(info.value) == (f"{lst}:3: expected 'relative/path label' "
                               f"(label an integer >= 0), got '{bad_line}'")


def test_first_line_that_looks_numeric_is_not_taken_as_header(tmp_path):
    with pytest.raises(ValueError, match=r"l.txt:1:"):
        read_list_file(write(tmp_path / "l.txt", "v.mp4 3.0\nw.mp4 1\n"))


def test_empty_or_missing_list(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        read_list_file(write(tmp_path / "e.txt", "# nothing\n\n"))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_list_file(tmp_path / "nope.txt")


def test_class_names(tmp_path):
    assert read_class_names(write(tmp_path / "c.txt", "a cat\n\nb dog\n")) == ["a cat", "b dog"]
    with pytest.raises(ValueError, match=r"d.txt: duplicated class names \['x'\]"):
        read_class_names(write(tmp_path / "d.txt", "x\ny\nx\n"))
    with pytest.raises(ValueError, match="e.txt: no class names"):
        read_class_names(write(tmp_path / "e.txt", "\n\n"))


def test_folder_dataset_sorts_classes_and_filters_extensions(tmp_path):
    for rel in ["walk/b.mp4", "walk/a.MKV", "run/x/deep.webm", "run/notes.txt",
                "jump/c.avi", ".hidden/h.mp4"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    samples, classes = folder_dataset(tmp_path)
    assert classes == ["jump", "run", "walk"]
    assert [(os.path.relpath(s.path, tmp_path), s.label) for s in samples] == [
        ("jump/c.avi", 0), ("run/x/deep.webm", 1), ("walk/a.MKV", 2), ("walk/b.mp4", 2)]
    with pytest.raises(ValueError, match="no videos"):
        folder_dataset(tmp_path, extensions=(".mov",))
