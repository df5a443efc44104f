"""Captions for text-video retrieval: the readers (generic and official layouts), the dataset, the demo."""

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptvid.data import (CaptionDataset, CaptionedVideo, VideoTransform, collate_captions,
                           demo_class_names, make_demo_data, read_activitynet, read_captions,
                           read_didemo, read_list_file, read_lsmdc, read_msrvtt, read_msvd,
                           read_webvid)
from adaptvid.data.demo import colour_name, write_video

FPS = 8
NUM_FRAMES = 24   # 3 seconds at 8 fps


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *objects) -> Path:
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory):
    """24 flat grey frames, frame i at level 10 * i + 5, so a frame's index shows in its pixels."""
    path = tmp_path_factory.mktemp("ramp") / "ramp.mp4"
    frames = np.stack([np.full((32, 32, 3), 10 * i + 5, np.uint8) for i in range(NUM_FRAMES)])
    write_video(path, frames, fps=FPS)
    return str(path)


# --------------------------------------------------------------------------- generic formats

def test_jsonl_captions_single_caption_windows_and_merging(tmp_path):
    path = jsonl(tmp_path / "ann" / "caps.jsonl",
                 {"video": "a/x.mp4", "captions": ["a cat", " a small cat "]},
                 {"video": "b.mp4", "caption": "a dog", "start": 1.5, "end": 3},
                 {"video": "a/x.mp4", "caption": "a cat again", "extra": 1},
                 {"video": "b.mp4", "caption": "the dog later", "start": 4, "end": None},
                 {"video": "/abs/c.mp4", "caption": "absolute"})
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n# a comment\n")
    videos = read_captions(path)
    root = str(tmp_path / "ann")
    assert videos == [
        CaptionedVideo(os.path.join(root, "a/x.mp4"), ["a cat", "a small cat", "a cat again"],
                       None, None, "a/x.mp4"),
        CaptionedVideo(os.path.join(root, "b.mp4"), ["a dog"], 1.5, 3.0, "b.mp4"),
        CaptionedVideo(os.path.join(root, "b.mp4"), ["the dog later"], 4.0, None, "b.mp4"),
        CaptionedVideo("/abs/c.mp4", ["absolute"], None, None, "/abs/c.mp4"),
    ]
    other = read_captions(path, data_root=tmp_path / "videos")
    assert other[0].path == os.path.join(str(tmp_path / "videos"), "a/x.mp4")


def test_csv_rows_merge_per_video_in_order_of_first_appearance(tmp_path):
    path = write(tmp_path / "caps.csv",
                 "video,caption,start,end\n"
                 "v2.mp4,\"a man, then a woman\",,\n"
                 "v1.mp4,first caption,0.5,2\n"
                 "v2.mp4,\"he says \"\"hi\"\"\",,\n"
                 "\n"
                 "v1.mp4,second caption,0.5,2\n")
    videos = read_captions(path)
    assert [v.video_id for v in videos] == ["v2.mp4", "v1.mp4"]
    assert videos[0].captions == ["a man, then a woman", 'he says "hi"']
    assert (videos[0].start, videos[0].end) == (None, None)
    assert videos[1].captions == ["first caption", "second caption"]
    assert (videos[1].start, videos[1].end) == (0.5, 2.0)
    plain = read_captions(write(tmp_path / "plain.csv", "\ufeffVideo,Caption\nx.mp4,words\n"))
    assert plain == [CaptionedVideo(str(tmp_path / "x.mp4"), ["words"], video_id="x.mp4")]


def test_format_by_extension_or_argument(tmp_path):
    lines = jsonl(tmp_path / "caps.json", {"video": "x.mp4", "caption": "hello"})
    assert read_captions(lines)[0].captions == ["hello"]          # .json = JSON Lines
    txt = write(tmp_path / "caps.txt", "video,caption\nx.mp4,hello\n")
    with pytest.raises(ValueError, match=r"caps\.txt.*format="):
        read_captions(txt)
    assert read_captions(txt, format="csv")[0].captions == ["hello"]
    with pytest.raises(ValueError, match="unknown captions format"):
        read_captions(txt, format="yaml")
    with pytest.raises(FileNotFoundError):
        read_captions(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- official layouts

MSRVTT_JSON = {
    "info": {"year": "2016", "version": "1.0", "description": "MSR-VTT", "contributor": "",
             "data_created": ""},
    "videos": [{"category": 9, "url": "https://www.youtube.com/watch?v=9lZi22qLlEo",
                "video_id": f"video{i}", "start time": 137.72, "end time": 149.44,
                "split": "train" if i < 2 else "test", "id": i} for i in range(4)],
    "sentences": [
        {"caption": "a car is shown", "video_id": "video0", "sen_id": 0},
        {"caption": "a man drives a car", "video_id": "video1", "sen_id": 1},
        {"caption": "a red car on the road", "video_id": "video0", "sen_id": 2},
        {"caption": "people are singing", "video_id": "video2", "sen_id": 3},
        {"caption": "a choir sings", "video_id": "video2", "sen_id": 4},
        {"caption": "a cartoon plays", "video_id": "video3", "sen_id": 5},
    ],
}


@pytest.fixture()
def msrvtt(tmp_path):
    data = tmp_path / "msrvtt_data"
    write(data / "MSRVTT_data.json", json.dumps(MSRVTT_JSON))
    write(data / "MSRVTT_train.9k.csv", "video_id\nvideo1\nvideo0\n")
    write(data / "MSRVTT_JSFUSION_test.csv",
          "key,vid_key,video_id,sentence\n"
          "ret0,msr2,video2,a group of people sing on stage\n"
          "ret1,msr3,video3,\"an animated show, with dogs\"\n")
    return data


def test_msrvtt_train_split_takes_every_json_sentence(msrvtt, tmp_path):
    videos = read_msrvtt(msrvtt / "MSRVTT_data.json", msrvtt / "MSRVTT_train.9k.csv",
                         tmp_path / "videos")
    assert [v.video_id for v in videos] == ["video1", "video0"]   # the split file's order
    assert videos[1].captions == ["a car is shown", "a red car on the road"]
    assert videos[1].path == os.path.join(str(tmp_path / "videos"), "video0.mp4")
    assert videos[1].start is None and videos[1].end is None      # the json's times are the source's
    everything = read_msrvtt(msrvtt / "MSRVTT_data.json", None, tmp_path / "videos")
    assert [len(v.captions) for v in everything] == [2, 1, 2, 1]


def test_msrvtt_jsfusion_1ka_has_one_caption_per_video_from_the_csv(msrvtt, tmp_path):
    videos = read_msrvtt(msrvtt / "MSRVTT_data.json", msrvtt / "MSRVTT_JSFUSION_test.csv",
                         tmp_path / "videos")
    assert [(v.video_id, v.captions) for v in videos] == [
        ("video2", ["a group of people sing on stage"]),       # not the json's two sentences
        ("video3", ["an animated show, with dogs"])]
    assert videos[0].path.endswith(os.path.join("videos", "video2.mp4"))


MSVD_DESCRIPTIONS = """\
# Microsoft Research Video Description Corpus
# English descriptions; format: VideoID Description
-4wsuPCjDBc_5_15 a squirrel is eating a peanut in its shell
-4wsuPCjDBc_5_15 A squirrel is eating.

ZbzDGXEwtGc_6_15   a man   is playing a guitar
-4wsuPCjDBc_5_15 a chipmunk eats
mv89psg6zh4_33_46 a bird is bathing in a sink
"""


def test_msvd_every_caption_of_a_test_video_is_kept(tmp_path):
    descriptions = write(tmp_path / "AllVideoDescriptions.txt", MSVD_DESCRIPTIONS)
    split = write(tmp_path / "test_list.txt", "mv89psg6zh4_33_46\n-4wsuPCjDBc_5_15\n")
    videos = read_msvd(descriptions, split, tmp_path / "YouTubeClips")
    assert [v.video_id for v in videos] == ["mv89psg6zh4_33_46", "-4wsuPCjDBc_5_15"]
    assert videos[1].captions == ["a squirrel is eating a peanut in its shell",
                                  "A squirrel is eating.", "a chipmunk eats"]
    assert videos[1].path == os.path.join(str(tmp_path / "YouTubeClips"), "-4wsuPCjDBc_5_15.avi")
    every = read_msvd(descriptions)
    assert [v.video_id for v in every] == ["-4wsuPCjDBc_5_15", "ZbzDGXEwtGc_6_15",
                                           "mv89psg6zh4_33_46"]
    assert every[1].captions == ["a man is playing a guitar"]


def test_msvd_refuses_pickles_and_names_the_text_file(tmp_path):
    with pytest.raises(ValueError, match=r"raw-captions\.pkl.*AllVideoDescriptions\.txt"):
        read_msvd(tmp_path / "raw-captions.pkl", None, tmp_path)
    with pytest.raises(ValueError, match="one video id per line"):
        read_msvd(tmp_path / "AllVideoDescriptions.txt", tmp_path / "test.pkl", tmp_path)


DIDEMO = [
    {"num_segments": 6, "annotation_id": 101, "description": "a dog runs in.",
     "reference_description": None, "video": "13530187@N00_2469047346_c71e3dcb0d.mov",
     "times": [[0, 0], [0, 1], [0, 0], [0, 0]], "dl_link": "https://www.flickr.com/video_download.gne?id=2469047346"},
    {"num_segments": 6, "annotation_id": 102, "description": "a girl waves",
     "video": "99@N00_1_aa.mp4", "times": [[2, 3], [2, 2], [3, 3], [2, 3]], "dl_link": ""},
    {"num_segments": 6, "annotation_id": 103, "description": " the dog jumps ",
     "video": "13530187@N00_2469047346_c71e3dcb0d.mov", "times": [[4, 5], [4, 4], [5, 5], [4, 5]],
     "dl_link": ""},
]


def test_didemo_descriptions_join_into_one_paragraph_per_video(tmp_path):
    path = write(tmp_path / "test_data.json", json.dumps(DIDEMO, indent=1))
    videos = read_didemo(path, tmp_path / "videos")
    assert [v.captions for v in videos] == [["a dog runs in. the dog jumps"], ["a girl waves"]]
    assert videos[0].path == os.path.join(str(tmp_path / "videos"),
                                          "13530187@N00_2469047346_c71e3dcb0d.mov.mp4")
    assert videos[1].path.endswith("99@N00_1_aa.mp4")              # already has the extension
    assert videos[0].start is None and videos[0].end is None       # the paragraph is the video
    as_written = read_didemo(path, tmp_path, video_ext="")
    assert as_written[0].path.endswith("c71e3dcb0d.mov")
    assert read_captions(path, format="didemo", data_root=tmp_path / "videos") == videos


ACTIVITYNET = {
    "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81], [56.26, 79.42]],
                      "sentences": ["A young woman is seen standing in a room. ",
                                    " She begins dancing around.", "She ends by bowing."]},
    "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 10.5]], "sentences": ["A man sits down."]},
}


def test_activitynet_sentences_join_into_one_paragraph_per_video(tmp_path):
    path = write(tmp_path / "val_1.json", json.dumps(ACTIVITYNET))
    videos = read_activitynet(path, tmp_path / "videos")
    assert [v.video_id for v in videos] == ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8"]
    assert videos[0].captions == ["A young woman is seen standing in a room. She begins dancing "
                                  "around. She ends by bowing."]
    assert videos[0].path == os.path.join(str(tmp_path / "videos"), "v_QOlSCBRmfWY.mp4")
    assert videos[0].start is None


def test_lsmdc_tab_separated_layout_and_movie_folders(tmp_path):
    path = write(tmp_path / "LSMDC16_annos_test.csv",
                 "0001_American_Beauty_00.00.51.926-00.00.54.129\t00.00.51.926\t00.00.54.129\t"
                 "00.00.51.926\t00.00.54.129\tSOMEONE, \"in a suit\", walks in.\n"
                 "1004_Juno_00.01.02.000-00.01.04.000\t00.01.02.000\t00.01.04.000\t"
                 "00.01.01.500\t00.01.04.500\tJuno sits.\tShe sits.\n")
    videos = read_lsmdc(path, tmp_path / "avi")
    assert [v.captions for v in videos] == [['SOMEONE, "in a suit", walks in.'], ["Juno sits."]]
    assert videos[0].path == os.path.join(
        str(tmp_path / "avi"), "0001_American_Beauty",
        "0001_American_Beauty_00.00.51.926-00.00.54.129.avi")
    assert videos[1].video_id == "1004_Juno_00.01.02.000-00.01.04.000"
    assert videos[1].path.endswith(os.path.join("1004_Juno", "1004_Juno_00.01.02.000-00.01.04.000.avi"))
    assert videos[0].start is None and videos[0].end is None       # the clip files are pre-cut


def test_webvid_csv_page_dir_layout(tmp_path):
    path = write(tmp_path / "results_2M_val.csv",
                 "videoid,contentUrl,duration,page_dir,name\n"
                 "1053841541,https://ak.picdn.net/x/1053841541.mp4,PT00H00M30S,006001_006050,"
                 "\"Aerial shot of a forest, in winter\"\n"
                 "31353427,https://ak.picdn.net/x/31353427.mp4,PT00H00M15S,020001_020050,A cat sleeps\n")
    videos = read_webvid(path, tmp_path / "videos")
    assert [v.captions for v in videos] == [["Aerial shot of a forest, in winter"], ["A cat sleeps"]]
    assert videos[0].path == os.path.join(str(tmp_path / "videos"), "006001_006050", "1053841541.mp4")
    assert videos[1].video_id == "31353427"


# --------------------------------------------------------------------------- bad input

def _bad_cases(tmp: Path):
    """(name, call, expected message regex): every error names the file and line (or key)."""
    def msr():
        return write(tmp / "MSRVTT_data.json", json.dumps(MSRVTT_JSON))

    def msd():
        return write(tmp / "AllVideoDescriptions.txt", MSVD_DESCRIPTIONS)

    return [
        ("jsonl empty caption",
         lambda: read_captions(jsonl(tmp / "a.jsonl", {"video": "x.mp4", "caption": "ok"},
                                     {"video": "y.mp4", "captions": ["fine", "  "]})),
         r"a\.jsonl:2: empty caption"),
        ("jsonl no caption key",
         lambda: read_captions(jsonl(tmp / "b.jsonl", {"video": "x.mp4"})),
         r"b\.jsonl:1: missing 'captions'"),
        ("jsonl malformed line",
         lambda: read_captions(write(tmp / "c.jsonl", '{"video": "x.mp4", "caption": "a"}\n'
                                                      '{"video": "y.mp4", "caption": }\n')),
         r"c\.jsonl:2: not a JSON object"),
        ("jsonl a whole json document",
         lambda: read_captions(write(tmp / "d.json", json.dumps(DIDEMO, indent=1))),
         r"d\.json:1: .*read_didemo"),
        ("jsonl missing video",
         lambda: read_captions(jsonl(tmp / "e.jsonl", {"caption": "a"})),
         r"e\.jsonl:1: missing 'video'"),
        ("jsonl end before start",
         lambda: read_captions(jsonl(tmp / "f.jsonl", {"video": "x", "caption": "a", "start": 3, "end": 1})),
         r"f\.jsonl:1: 'end' \(1\) must be after 'start' \(3\)"),
        ("jsonl bad time",
         lambda: read_captions(jsonl(tmp / "g.jsonl", {"video": "x", "caption": "a", "start": "soon"})),
         r"g\.jsonl:1: 'start' must be a time in seconds"),
        ("csv missing column",
         lambda: read_captions(write(tmp / "h.csv", "video,text\nx.mp4,a\n")),
         r"h\.csv:1: .*no 'caption' column"),
        ("csv empty caption",
         lambda: read_captions(write(tmp / "i.csv", "video,caption\nx.mp4,a\ny.mp4,\n")),
         r"i\.csv:3: empty caption"),
        ("csv unquoted comma",
         lambda: read_captions(write(tmp / "j.csv", "video,caption\nx.mp4,a, b\n")),
         r"j\.csv:2: expected 2 fields"),
        ("msrvtt split id absent",
         lambda: read_msrvtt(msr(), write(tmp / "MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo77\n"), tmp),
         r"MSRVTT_train\.9k\.csv:3: video id 'video77' is not in .*MSRVTT_data\.json"),
        ("msrvtt split missing column",
         lambda: read_msrvtt(msr(), write(tmp / "split.csv", "id\nvideo0\n"), tmp),
         r"split\.csv:1: .*no 'video_id' column"),
        ("msrvtt jsfusion empty sentence",
         lambda: read_msrvtt(msr(), write(tmp / "MSRVTT_JSFUSION_test.csv",
                                        "key,vid_key,video_id,sentence\nret0,msr2,video2,\n"), tmp),
         r"MSRVTT_JSFUSION_test\.csv:2: empty caption"),
        ("msrvtt json sentence without caption",
         lambda: read_msrvtt(write(tmp / "m.json", json.dumps({"videos": [], "sentences": [
             {"video_id": "video0", "caption": "a"}, {"video_id": "video0", "sen_id": 1}]})), None, tmp),
         r"m\.json: sentences\[1\] \(video_id 'video0'\) has no 'caption'"),
        ("msrvtt malformed json",
         lambda: read_msrvtt(write(tmp / "n.json", '{"sentences": [\n  {"video_id": "video0",}\n]}'), None, tmp),
         r"n\.json:2: .*not valid JSON"),
        ("msvd line without text",
         lambda: read_msvd(write(tmp / "o.txt", "# header\nvid1 a caption\nvid2\n"), None, tmp),
         r"o\.txt:3: video 'vid2' has no caption text"),
        ("msvd split id absent",
         lambda: read_msvd(msd(), write(tmp / "val_list.txt", "mv89psg6zh4_33_46\n\nnot_a_video\n"), tmp),
         r"val_list\.txt:3: video id 'not_a_video' is not in"),
        ("didemo empty description",
         lambda: read_didemo(write(tmp / "p.json", json.dumps([{"video": "a.mov", "description": "x"},
                                                                {"annotation_id": 7, "video": "a.mov",
                                                                 "description": ""}])), tmp),
         r"p\.json: entry \[1\] \(annotation_id 7\): empty caption"),
        ("didemo missing description",
         lambda: read_didemo(write(tmp / "q.json", json.dumps([{"video": "a.mov", "times": [[0, 0]]}])), tmp),
         r"q\.json: entry \[0\] has no 'description'"),
        ("activitynet empty sentence",
         lambda: read_activitynet(write(tmp / "r.json", json.dumps(
             {"v_a": {"duration": 3, "timestamps": [[0, 1], [1, 2]], "sentences": ["ok", " "]}})), tmp),
         r"r\.json: 'v_a' sentences\[1\]: empty caption"),
        ("activitynet missing sentences",
         lambda: read_activitynet(write(tmp / "s.json", json.dumps({"v_a": {"duration": 3}})), tmp),
         r"s\.json: 'v_a' has no 'sentences'"),
        ("lsmdc missing column",
         lambda: read_lsmdc(write(tmp / "t.csv", "1004_Juno_00.01.02.000-00.01.04.000\t00.01.02.000\t"
                                                 "00.01.04.000\tJuno sits.\n"), tmp),
         r"t\.csv:1: expected 6 tab-separated fields"),
        ("lsmdc empty sentence",
         lambda: read_lsmdc(write(tmp / "u.csv", "1004_Juno_00.01.02.000-00.01.04.000\t00.01.02.000\t"
                                                 "00.01.04.000\t00.01.02.000\t00.01.04.000\t \n"), tmp),
         r"u\.csv:1: empty caption"),
        ("lsmdc spaces instead of tabs",
         lambda: read_lsmdc(write(tmp / "v.csv", "a_b 00.00.01.000 00.00.02.000 00.00.01.000 "
                                                 "00.00.02.000 words\n"), tmp),
         r"v\.csv:1: expected 6 tab-separated fields"),
        ("webvid missing column",
         lambda: read_webvid(write(tmp / "w.csv", "videoid,contentUrl,duration,name\n1,u,PT1S,a\n"), tmp),
         r"w\.csv:1: .*no 'page_dir' column"),
        ("webvid empty name",
         lambda: read_webvid(write(tmp / "x.csv", "videoid,contentUrl,duration,page_dir,name\n"
                                                  "1,u,PT1S,000001_000050,\n"), tmp),
         r"x\.csv:2: empty caption"),
    ]


BAD_CASES = [case[0] for case in _bad_cases(Path("unused"))]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_naming_file_and_line(tmp_path, case):
    _, call, pattern = next(c for c in _bad_cases(tmp_path) if c[0] == case)
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert re.search(pattern, message), message
    assert "\n" not in message


def test_missing_video_files_are_not_a_reader_error(tmp_path):
    videos = read_captions(jsonl(tmp_path / "caps.jsonl", {"video": "nowhere.mp4", "caption": "a"}))
    assert not Path(videos[0].path).exists()


# --------------------------------------------------------------------------- dataset

def red_levels(video: torch.Tensor) -> list[float]:
    """Per-frame mean of channel 0 in 0..255 units (transform with mean 0, std 1)."""
    return (video[0].mean(dim=(1, 2)) * 255).tolist()


def frame_of(level: float) -> int:
    return int(round((level - 5) / 10))


PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_test_items_sample_segment_centres_over_the_video_or_its_window(ramp_video):
    videos = [CaptionedVideo(ramp_video, ["a", "b"]),
              CaptionedVideo(ramp_video, ["c"], start=1.0, end=2.0),
              CaptionedVideo(ramp_video, ["d"], start=2.5, end=10.0),   # clamped to the video
              CaptionedVideo(ramp_video, ["e"], start=5.0),             # past the end: last frame
              CaptionedVideo(ramp_video, ["f"], end=1.0)]
    ds = CaptionDataset(videos, num_frames=4, train=False,
                        transform=VideoTransform(32, train=False, **PLAIN))
    expected = [[3, 9, 15, 21], [9, 11, 13, 15], [20, 21, 22, 23], [23, 23, 23, 23], [1, 3, 5, 7]]
    for i, indices in enumerate(expected):
        assert ds.frame_indices(videos[i], NUM_FRAMES, FPS) == indices
        item = ds[i]
        assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.float32
        assert item["captions"] == videos[i].captions and item["index"] == i
        assert "caption" not in item
        assert [frame_of(level) for level in red_levels(item["video"])] == indices
    assert ds.frame_window(videos[1], NUM_FRAMES, 0.0) == (0, NUM_FRAMES)   # no fps: whole video


def test_train_items_draw_frames_and_a_caption_from_item_rng(ramp_video):
    videos = [CaptionedVideo(ramp_video, [f"caption {k}" for k in range(5)], start=1.0, end=2.5)]
    ds = CaptionDataset(videos * 6, num_frames=3, train=True, seed=4,
                        transform=VideoTransform(32, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), **PLAIN))
    item = ds[2]
    assert item["video"].shape == (3, 3, 32, 32) and item["index"] == 2 and "captions" not in item
    assert item["caption"] == videos[0].captions[int(ds.item_rng(2).integers(5))]
    frames = [frame_of(level) for level in red_levels(item["video"])]
    assert all(8 <= f < 20 for f in frames) and frames == sorted(frames)     # inside [1 s, 2.5 s)
    for k, f in enumerate(frames):                                           # one per segment
        assert 8 + 4 * k <= f < 8 + 4 * (k + 1)
    again = ds[2]
    assert again["caption"] == item["caption"] and torch.equal(again["video"], item["video"])
    chosen = {ds[i]["caption"] for i in range(6)}
    ds.set_epoch(1)
    assert ds.epoch == 1
    later = [ds[i]["caption"] for i in range(6)]
    assert len(chosen | set(later)) > 1                                     # captions vary
    assert later[2] == videos[0].captions[int(ds.item_rng(2).integers(5))]


def test_unreadable_videos_are_skipped_and_collated(ramp_video, tmp_path, caplog):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    videos = [CaptionedVideo(ramp_video, ["a", "b"]), CaptionedVideo(str(empty), ["c"]),
              CaptionedVideo(ramp_video, ["d"]), CaptionedVideo(str(tmp_path / "gone.mp4"), ["e"])]
    test = CaptionDataset(videos, num_frames=2, train=False, size=32)
    with caplog.at_level(logging.WARNING, logger="adaptvid.data"):
        assert test[1] == {"unreadable": 1} and test[3] == {"unreadable": 3}
    messages = [r.getMessage() for r in caplog.records if r.name == "adaptvid.data"]
    assert len(messages) == 2 and "empty (0 bytes)" in messages[0] and "gone.mp4" in messages[1]
    batch = collate_captions([test[i] for i in range(4)])
    assert batch["video"].shape == (2, 3, 2, 32, 32)
    assert batch["captions"] == [["a", "b"], ["d"]] and "caption" not in batch
    assert batch["index"].tolist() == [0, 2] and batch["index"].dtype == torch.long
    assert batch["skipped"] == 2 and batch["skipped_indices"].tolist() == [1, 3]

    train = CaptionDataset(videos, num_frames=2, train=True, size=32)
    batch = collate_captions([train[0], train[1], train[2], None])
    assert batch["caption"][0] in ("a", "b") and batch["caption"][1] == "d" and "captions" not in batch
    assert batch["skipped"] == 2 and batch["skipped_indices"].tolist() == [1]

    nothing = collate_captions([{"unreadable": 5}, None])
    assert nothing["video"] is None and nothing["index"].shape == (0,)
    assert nothing["caption"] == [] and nothing["captions"] == [] and nothing["skipped"] == 2
    with pytest.raises(ValueError, match="same batch"):
        collate_captions([train[0], test[0]])


def test_dataset_rejects_videos_without_captions(ramp_video):
    with pytest.raises(ValueError, match="non-empty list of captions"):
        CaptionDataset([CaptionedVideo(ramp_video, [])])
    with pytest.raises(ValueError, match="non-empty list of captions"):
        CaptionDataset([CaptionedVideo(ramp_video, "a string")])


# --------------------------------------------------------------------------- demo

def test_demo_writes_captions_consistent_with_its_lists(tmp_path):
    demo = make_demo_data(tmp_path / "demo", videos_per_class_train=2, videos_per_class_val=1,
                          num_frames=8, size=32)
    names = demo_class_names()
    object_of = {0: "square", 1: "square", 2: "disc", 3: "disc", 4: "square", 5: "square"}
    direction_of = {0: ("grows", "bigger"), 1: ("shrinks", "smaller"), 2: ("brightens", "fades in"),
                    3: ("fades", "fades out"), 4: ("turns blue", "red to blue"),
                    5: ("turns red", "blue to red")}
    colours = {"red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "grey"}
    for split in ("train", "val"):
        path = Path(demo[f"captions_{split}"])
        assert path == tmp_path / "demo" / f"captions_{split}.jsonl"
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        samples = read_list_file(demo[split])
        assert [os.path.join(demo["root"], e["video"]) for e in entries] == [s.path for s in samples]
        for entry, sample in zip(entries, samples):
            assert entry["video"].split("/")[1] == names[sample.label].replace(" ", "_")
            first, second = entry["captions"]
            assert all(object_of[sample.label] in c for c in (first, second))
            assert direction_of[sample.label][0] in first and direction_of[sample.label][1] in second
            colour = first.split()[1]
            assert colour in colours and colour in second
        videos = read_captions(path)
        assert [v.path for v in videos] == [s.path for s in samples]
    ds = CaptionDataset(read_captions(demo["captions_val"]), num_frames=4, train=False, size=32)
    assert ds[0]["video"].shape == (3, 4, 32, 32) and len(ds[0]["captions"]) == 2


def test_colour_names():
    assert [colour_name(c) for c in ((230, 30, 30), (30, 200, 40), (40, 40, 230), (240, 240, 235),
                                     (250, 230, 60), (250, 150, 40), (60, 230, 230))] == [
        "red", "green", "blue", "white", "yellow", "orange", "cyan"]
