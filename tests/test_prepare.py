"""`adaptvid prepare`: official annotation files (written here in their published layouts) to list files
that adaptvid's readers load with the right labels; and the generic reader's refusals of split files."""
import json
import logging
import os

import pytest

from adaptvid.cli import main
from adaptvid.data import read_class_names, read_list_file
from adaptvid.data.lists import check_list_labels
from adaptvid.data.prepare import (novel_classes, prepare_hmdb51, prepare_k600_zeroshot, prepare_kinetics,
                                   prepare_ssv2, prepare_ucf101, zeroshot_split)


def crlf(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    return path


def touch(root, rel):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def loaded(list_file, classes_file):
    """(video path relative to nothing: basename, class name) per line, as adaptvid reads them."""
    names = read_class_names(classes_file)
    samples = read_list_file(list_file, num_classes=len(names))
    assert all(os.path.exists(s.path) for s in samples)
    return [(os.path.basename(s.path), names[s.label]) for s in samples]


# -- Kinetics ------------------------------------------------------------------------------------------

def kinetics_files(tmp_path):
    ann = tmp_path / "ann"
    crlf(ann / "train.csv", ["label,youtube_id,time_start,time_end,split,is_cc",
                             'abseiling,aaaaaaaaaaa,0,10,train,0',
                             '"massaging person\'s head",bbbbbbbbbbb,14,24,train,0',
                             '"juggling, balls",-ccccccccc,3,13,train,1',
                             'abseiling,ddddddddddd,100,110,train,0'])      # missing on disk
    crlf(ann / "validate.csv", ["label,youtube_id,time_start,time_end,split,is_cc",
                                '"juggling, balls",eeeeeeeeeee,7,17,val,0'])
    videos = tmp_path / "videos"
    touch(videos, "train/abseiling/aaaaaaaaaaa_000000_000010.mp4")
    touch(videos, "train/massaging person's head/bbbbbbbbbbb_000014_000024.mkv")
    touch(videos, "train/juggling, balls/-ccccccccc_000003_000013.mp4")
    touch(videos, "val/juggling, balls/eeeeeeeeeee_000007_000017.webm")
    return ann, videos


def test_kinetics_csv_to_lists_with_missing_quoted_labels_and_crlf(tmp_path):
    ann, videos = kinetics_files(tmp_path)
    out = tmp_path / "out"
    report = prepare_kinetics([ann / "train.csv", ann / "validate.csv"], videos, out)
    assert read_class_names(out / "classes.txt") == ["abseiling", "juggling, balls", "massaging person's head"]
    assert loaded(out / "train.txt", out / "classes.txt") == [
        ("aaaaaaaaaaa_000000_000010.mp4", "abseiling"),
        ("bbbbbbbbbbb_000014_000024.mkv", "massaging person's head"),
        ("-ccccccccc_000003_000013.mp4", "juggling, balls")]
    assert loaded(out / "val.txt", out / "classes.txt") == [("eeeeeeeeeee_000007_000017.webm", "juggling, balls")]
    assert report.listed == {"train.txt": 3, "val.txt": 1} and report.missing == {"train.txt": 1, "val.txt": 0}
    missing = (out / "missing.txt").read_text().splitlines()[1:]
    assert missing == ["train.txt\tddddddddddd_000100_000110.mp4\t0"]
    assert "label folders" in report.summary() and "1 missing" in report.summary()
    assert not (out / "test.txt").exists()


def test_kinetics_flat_layout_bare_ids_and_bad_row(tmp_path):
    ann, _ = kinetics_files(tmp_path)
    flat = tmp_path / "flat"
    touch(flat, "aaaaaaaaaaa.mp4")   # named by the bare youtube id
    report = prepare_kinetics([ann / "train.csv"], flat, tmp_path / "out")
    assert report.listed == {"train.txt": 1} and report.missing == {"train.txt": 3}
    assert "flat layout" in report.summary()
    bad = crlf(tmp_path / "bad.csv", ["label,youtube_id,time_start,time_end,split", "juggling, balls,x,1,2,train"])
    with pytest.raises(ValueError, match=r"bad.csv:2: expected 5 fields.*quote a label"):
        prepare_kinetics([bad], flat, tmp_path / "o2")
    no_header = crlf(tmp_path / "nh.csv", ["abseiling,x,1,2,train"])
    with pytest.raises(ValueError, match=r"nh.csv:1: expected the Kinetics header"):
        prepare_kinetics([no_header], flat, tmp_path / "o3")


def test_nothing_found_is_an_error_and_outputs_are_not_overwritten(tmp_path):
    ann, videos = kinetics_files(tmp_path)
    with pytest.raises(ValueError, match="none of the 4 annotated videos was found"):
        prepare_kinetics([ann / "train.csv"], tmp_path / "ann", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    prepare_kinetics([ann / "train.csv"], videos, tmp_path / "o")
    with pytest.raises(FileExistsError, match=r"train.txt already exists.*--overwrite"):
        prepare_kinetics([ann / "train.csv"], videos, tmp_path / "o")
    assert prepare_kinetics([ann / "train.csv"], videos, tmp_path / "o", overwrite=True).listed["train.txt"] == 3


# -- K600 zero-shot --------------------------------------------------------------------------------------

def test_k600_zeroshot_novel_classes_and_seeded_splits(tmp_path):
    old = [f"old action {i}" for i in range(10)]
    new = [f"new action {i:03d}" for i in range(220)]
    k400 = crlf(tmp_path / "k400.txt", old)
    k600 = crlf(tmp_path / "k600.txt", [n.upper() if n == "old action 3" else n for n in old] + new)
    assert novel_classes(old, old + new) == new
    first, again, other = zeroshot_split(new, 0), zeroshot_split(new, 0), zeroshot_split(new, 1)
    assert first == again and first != other and len(first) == 160 and set(first) <= set(new)
    assert first == sorted(first)
    report = prepare_k600_zeroshot([k400], [k600], tmp_path / "zs")
    assert read_class_names(tmp_path / "zs" / "novel_classes.txt") == new
    for i, seed in enumerate((0, 1, 2), start=1):
        names = read_class_names(tmp_path / "zs" / f"split{i}" / "classes.txt")
        held = read_class_names(tmp_path / "zs" / f"split{i}" / "held_out_classes.txt")
        assert names == zeroshot_split(new, seed) and sorted(names + held) == new
    assert report.num_classes == 220
    published = crlf(tmp_path / "published.csv", ["id,name"] + [f"{j},{n}" for j, n in enumerate(new[:160])])
    prepare_k600_zeroshot([k400], [k600], tmp_path / "zs2", split_files=[published])
    assert read_class_names(tmp_path / "zs2" / "split1" / "classes.txt") == new[:160]
    with pytest.raises(ValueError, match="'nope' is not a Kinetics-600 class"):
        prepare_k600_zeroshot([k400], [k600], tmp_path / "zs3", split_files=[crlf(tmp_path / "s.txt", ["nope"])])


def test_k600_zeroshot_lists_the_videos_of_each_split(tmp_path):
    ann, videos = kinetics_files(tmp_path)   # K400 = abseiling only: the two other classes are novel
    k400 = crlf(tmp_path / "k400.txt", ["abseiling"])
    report = prepare_k600_zeroshot([k400], [ann / "train.csv", ann / "validate.csv"], tmp_path / "zs",
                                   video_root=videos, seeds=[0], num_classes=1)
    names = read_class_names(tmp_path / "zs" / "split1" / "classes.txt")
    assert len(names) == 1 and names[0] in ("juggling, balls", "massaging person's head")
    listed = loaded(tmp_path / "zs" / "split1" / "train.txt", tmp_path / "zs" / "split1" / "classes.txt")
    assert [name for _, name in listed] == names and report.num_classes == 2


# -- SSv2 ---------------------------------------------------------------------------------------------------

def test_ssv2_templates_lose_their_brackets(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "labels.json").write_text(json.dumps({"Putting something on something": "1",
                                                 "Approaching something with your camera": "0"}))
    entry = lambda i, t: {"id": str(i), "label": "x", "template": t, "placeholders": ["a"]}  # noqa: E731
    (ann / "train.json").write_text(json.dumps([entry(1, "Putting [something] on [something]"),
                                                entry(2, "Approaching [something] with your camera"),
                                                entry(3, "Putting [something] on [something]")]), encoding="utf-8")
    (ann / "validation.json").write_bytes(("\ufeff" + json.dumps([entry(4, "Putting [something] on [something]")])
                                           .replace(", ", ",\r\n")).encode())
    videos = tmp_path / "videos"
    touch(videos, "1.webm")
    touch(videos, "2/img_00001.jpg")     # a frame folder
    touch(videos, "4.webm")
    report = prepare_ssv2(ann, videos, tmp_path / "out")
    out = tmp_path / "out"
    assert read_class_names(out / "classes.txt") == ["Approaching something with your camera",
                                                     "Putting something on something"]
    samples = read_list_file(out / "train.txt")
    assert [(os.path.basename(s.path), s.label) for s in samples] == [("1.webm", 1), ("2", 0)]
    assert os.path.isdir(samples[1].path)
    assert report.missing == {"train.txt": 1, "val.txt": 0}
    (ann / "validation.json").write_text(json.dumps([entry(5, "Dropping [something]")]))
    with pytest.raises(ValueError, match=r"validation.json: entry 1 \(id 5\): class 'Dropping something'"):
        prepare_ssv2(ann, videos, tmp_path / "o2")


# -- UCF101 and HMDB51 --------------------------------------------------------------------------------------

UCF = ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]


def ucf_files(tmp_path):
    ann = tmp_path / "ucfTrainTestlist"
    crlf(ann / "classInd.txt", [f"{i} {name}" for i, name in enumerate(UCF, start=1)])
    videos = tmp_path / "UCF-101"
    for split in (1, 2, 3):
        train = [f"{c}/v_{c}_g0{split}_c01.avi {i}" for i, c in enumerate(UCF, start=1)]
        test = [f"{c}/v_{c}_g0{split + 3}_c01.avi" for c in UCF]
        crlf(ann / f"trainlist0{split}.txt", train)
        crlf(ann / f"testlist0{split}.txt", test)
        for line in train + test:
            if "Archery_g06" not in line:        # one test video missing
                touch(videos, line.split()[0])
    return ann, videos


def test_ucf101_labels_are_zero_based_per_split(tmp_path):
    ann, videos = ucf_files(tmp_path)
    out = tmp_path / "out"
    report = prepare_ucf101(ann, videos, out)
    for split in (1, 2, 3):
        assert loaded(out / f"split{split}" / "train.txt", out / "classes.txt") == [
            (f"v_{c}_g0{split}_c01.avi", c) for c in UCF]
        assert read_list_file(out / f"split{split}" / "train.txt")[0].label == 0
    assert [name for _, name in loaded(out / "split3" / "val.txt", out / "classes.txt")] == UCF[:2]
    assert report.missing["split3/val.txt"] == 1 and report.listed["split1/val.txt"] == 3
    one = prepare_ucf101(ann, videos, tmp_path / "one", split=2)
    assert sorted(one.listed) == ["train.txt", "val.txt"]
    crlf(ann / "trainlist01.txt", ["Archery/v_Archery_g01_c01.avi 1"])
    with pytest.raises(ValueError, match=r"trainlist01.txt:1: label 1 is class 'ApplyEyeMakeup'.*'Archery'"):
        prepare_ucf101(ann, videos, tmp_path / "bad", split=1)


HMDB = ["brush_hair", "cartwheel", "shoot_bow"]


def test_hmdb51_flags_become_train_and_test(tmp_path):
    ann = tmp_path / "testTrainMulti_7030_splits"
    videos = tmp_path / "hmdb51"
    for c in HMDB:
        for split in (1, 2, 3):
            crlf(ann / f"{c}_test_split{split}.txt",
                 [f"{c}_a_{split}.avi 1 ", f"{c}_b_{split}.avi 2 ", f"{c}_c_{split}.avi 0 "])
            for v in "abc":
                touch(videos, f"{c}/{c}_{v}_{split}.avi")
    (videos / "cartwheel" / "cartwheel_b_1.avi").unlink()
    report = prepare_hmdb51(ann, videos, tmp_path / "out", split=1)
    out = tmp_path / "out"
    assert loaded(out / "train.txt", out / "classes.txt") == [(f"{c}_a_1.avi", c) for c in HMDB]
    assert loaded(out / "val.txt", out / "classes.txt") == [("brush_hair_b_1.avi", "brush_hair"),
                                                           ("shoot_bow_b_1.avi", "shoot_bow")]
    assert report.missing == {"train.txt": 0, "val.txt": 1}
    assert "cartwheel/cartwheel_b_1.avi" in (out / "missing.txt").read_text()
    crlf(ann / "shoot_bow_test_split2.txt", ["shoot_bow_a_2.avi 3"])
    with pytest.raises(ValueError, match=r"shoot_bow_test_split2.txt:1: expected '<video>.avi <flag>'"):
        prepare_hmdb51(ann, videos, tmp_path / "o2")


# -- the generic reader's refusals --------------------------------------------------------------------------

def test_reader_refuses_one_based_and_split_flag_lists(tmp_path, caplog):
    ann, _ = ucf_files(tmp_path)
    with pytest.raises(ValueError, match=r"trainlist01.txt: labels run 1..3 .*adaptvid prepare ucf101"):
        read_list_file(ann / "trainlist01.txt", num_classes=3)
    flags = crlf(tmp_path / "brush_hair_test_split1.txt", [f"v{i}.avi {i % 3}" for i in range(60)])
    with pytest.raises(ValueError, match=r"HMDB51 split file.*adaptvid prepare hmdb51"):
        read_list_file(flags, num_classes=51, classes_from="classes.txt")
    # legitimate lists: tiny demo-sized ones, few-shot ones, a val list of the first classes
    assert len(read_list_file(flags, num_classes=3)) == 60
    few = crlf(tmp_path / "few.txt", [f"v{i}.avi {i // 2}" for i in range(102)])
    assert len(read_list_file(few, num_classes=51)) == 102
    head = crlf(tmp_path / "head.txt", [f"v{i}.avi {i // 50}" for i in range(150)])
    assert len(read_list_file(head, num_classes=400)) == 150
    with caplog.at_level(logging.WARNING, logger="adaptvid.data"):
        check_list_labels(read_list_file(flags), 10, "x.txt")
    assert "use only 3 of the 10 classes" not in caplog.text
    many = crlf(tmp_path / "many.txt", [f"v{i}.avi {i % 2}" for i in range(100)])
    with caplog.at_level(logging.WARNING, logger="adaptvid.data"):
        read_list_file(many, num_classes=20)
    assert "100 videos use only 2 of the 20 classes" in caplog.text


# -- the command ------------------------------------------------------------------------------------------

def test_cli_prepare_ucf101_end_to_end(tmp_path, capsys):
    ann, videos = ucf_files(tmp_path)
    out = tmp_path / "lists"
    argv = ["prepare", "ucf101", "--annotations", str(ann), "--video-root", str(videos), "--output", str(out),
            "--split", "1"]
    assert main(argv) == 0
    assert "train.txt: 3 videos listed" in capsys.readouterr().out
    assert loaded(out / "val.txt", out / "classes.txt") == [(f"v_{c}_g04_c01.avi", c) for c in UCF]
    assert main(argv) == 2
    assert "train.txt already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--absolute"]) == 0
    assert (out / "train.txt").read_text().startswith(str(videos.resolve()) + "/ApplyEyeMakeup/")
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "ucf101", "--annotations", str(ann), "--video-root", str(tmp_path / "empty"), "--output",
                 str(tmp_path / "x")]) == 2
    assert "none of the" in capsys.readouterr().err
