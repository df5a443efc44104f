"""`adaptvid prepare msrvtt` / `prepare msvd`: the official two-file annotations to captions files that
`adapt --task retrieval` reads as they are; missing videos counted and listed, nothing overwritten."""
import json
from pathlib import Path

import pytest

from adaptvid.cli import main
from adaptvid.data import read_captions
from adaptvid.data.prepare import prepare_msrvtt, prepare_msvd
from test_captions import MSRVTT_JSON, MSVD_DESCRIPTIONS, write


def _videos(folder, names, ext):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}{ext}").write_bytes(b"\x00")   # presence is all prepare checks
    return folder


@pytest.fixture()
def msrvtt(tmp_path):
    data = tmp_path / "msrvtt_data"
    write(data / "MSRVTT_data.json", json.dumps(MSRVTT_JSON))
    write(data / "MSRVTT_train.9k.csv", "video_id\r\nvideo1\r\nvideo0\r\n")   # CRLF, as some copies are
    write(data / "MSRVTT_train.7k.csv", "video_id\nvideo0\n")
    write(data / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\n"
                                             "ret0,msr2,video2,a group of people sing on stage\n"
                                             "ret1,msr3,video3,\"an animated show, with dogs\"\n")
    return data


def test_msrvtt_writes_train_and_1ka_test_captions_with_missing_videos_counted(msrvtt, tmp_path, capsys):
    videos = _videos(tmp_path / "MSRVTT_Videos", ["video0", "video1", "video2"], ".mp4")   # video3 missing
    out = tmp_path / "lists"
    assert main(["prepare", "msrvtt", "--annotations", str(msrvtt), "--video-root", str(videos),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train.jsonl: 2 videos listed" in printed and "test.jsonl: 1 videos listed, 1 missing" in printed
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert lines == [{"video": "../MSRVTT_Videos/video1.mp4", "captions": ["a man drives a car"]},
                     {"video": "../MSRVTT_Videos/video0.mp4", "captions": ["a car is shown", "a red car on the road"]}]
    test = read_captions(out / "test.jsonl")   # readable as written, paths relative to the file
    assert [(Path(v.path).resolve(), v.captions) for v in test] == [(videos / "video2.mp4", ["a group of people sing on stage"])]
    assert "test.jsonl\t" + str(videos / "video3.mp4") in (out / "missing.txt").read_text()
    before = (out / "train.jsonl").read_bytes()
    assert main(["prepare", "msrvtt", "--annotations", str(msrvtt), "--video-root", str(videos), "--output", str(out),
                 "--train-split", "7k"]) == 2   # never overwritten without asking
    assert (out / "train.jsonl").read_bytes() == before
    report = prepare_msrvtt(msrvtt, videos, out, train_split="7k", overwrite=True, absolute=True)
    assert report.listed == {"train.jsonl": 1, "test.jsonl": 1}
    assert json.loads((out / "train.jsonl").read_text())["video"] == str((videos / "video0.mp4").resolve())


def test_msvd_writes_three_splits_keeping_every_caption(tmp_path):
    ann = tmp_path / "msvd_data"
    write(ann / "AllVideoDescriptions.txt", MSVD_DESCRIPTIONS)
    write(ann / "train_list.txt", "-4wsuPCjDBc_5_15\n")
    write(ann / "val_list.txt", "ZbzDGXEwtGc_6_15\n")
    write(ann / "test_list.txt", "mv89psg6zh4_33_46\n-4wsuPCjDBc_5_15\n")
    videos = _videos(tmp_path / "YouTubeClips", ["-4wsuPCjDBc_5_15", "mv89psg6zh4_33_46", "ZbzDGXEwtGc_6_15"], ".avi")
    report = prepare_msvd(ann, videos, tmp_path / "out")
    assert report.listed == {"train.jsonl": 1, "val.jsonl": 1, "test.jsonl": 2} and report.total_missing == 0
    test = read_captions(tmp_path / "out" / "test.jsonl")
    assert [len(v.captions) for v in test] == [1, 3]   # every description of a test video is a query


def test_no_video_found_names_the_expected_path(msrvtt, tmp_path):
    with pytest.raises(ValueError, match=r"none of the 4 annotated videos.*video1\.mp4"):
        prepare_msrvtt(msrvtt, _videos(tmp_path / "empty", [], ".mp4"), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="MSRVTT_JSFUSION_test.csv"):
        (msrvtt / "MSRVTT_JSFUSION_test.csv").unlink()
        prepare_msrvtt(msrvtt, tmp_path, tmp_path / "out")
