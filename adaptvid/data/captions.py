"""Captioned videos for text-video retrieval: annotation readers and the dataset.

Every reader returns a list of :class:`CaptionedVideo` (a video file, its captions and,
optionally, the window of the file they describe), in a stable order: the order of the split
file when there is one, otherwise the order in which each video first appears.  Video paths are
joined onto ``data_root`` (by default the annotation file's folder); absolute paths stay as they
are.  Nothing here checks that the video files exist: :class:`CaptionDataset` skips the missing
or broken ones when it loads them, with a warning, and ``collate_captions`` counts them.

Readers:

* ``read_captions``: the generic formats (JSON Lines, CSV), below;
* ``read_msrvtt``, ``read_msvd``, ``read_didemo``, ``read_activitynet``, ``read_lsmdc``,
  ``read_webvid``: the official annotation files of those datasets, each documented with the
  public description it follows.

Input that cannot be read correctly raises ``ValueError`` naming ``file:line`` (or the file
and the JSON key) and what to fix.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import SeededEpochs, decode_size
from .lists import _read_lines
from .readers import VideoReadError, open_video
from .sampling import segment_indices
from .transforms import CLIP_MEAN, CLIP_STD, VideoTransform

__all__ = ["CaptionedVideo", "read_captions", "read_msrvtt", "read_msvd", "read_didemo",
           "read_activitynet", "read_lsmdc", "read_webvid", "CaptionDataset", "collate_captions",
           "CAPTION_FORMATS"]

logger = logging.getLogger("adaptvid.data")

_GENERIC_EXAMPLE = '{"video": "rel/path.mp4", "captions": ["a caption", "another one"]}'


@dataclass
class CaptionedVideo:
    """One video file and the captions that describe it.

    ``start``/``end`` (seconds, either may be None) restrict the video to the window the
    captions describe; None for both means the whole file.  ``video_id`` is the dataset's own
    name for the video (``video0`` for MSR-VTT, the clip id for LSMDC, ...), or the path as
    written in a generic captions file.
    """

    path: str
    captions: list[str]
    start: float | None = None
    end: float | None = None
    video_id: str = ""


# --------------------------------------------------------------------------- helpers

def _root(path: Path, data_root) -> Path:
    return Path(data_root) if data_root is not None else path.parent


def _existing(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: '{path}'")
    return path


def _load_json(path: Path, what: str):
    """A whole JSON document; a syntax error names ``file:line:column``."""
    text = "\n".join(_read_lines(path, what))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: the {what} is not valid JSON ({exc.msg} at "
                         f"column {exc.colno}); fix the file or download it again") from None


def _caption_text(value, where: str, fix: str) -> str:
    """A caption stripped of surrounding white space; empty or non-text raises."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: a caption must be text, got {type(value).__name__} "
                         f"{value!r}; {fix}")
    text = value.strip()
    if not text:
        raise ValueError(f"{where}: empty caption; {fix}")
    return text


def _seconds(value, where: str, name: str) -> float | None:
    """A time in seconds (>= 0, finite) from a number or numeric text; None/"" -> None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        number = math.nan
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: '{name}' must be a time in seconds (a number >= 0), "
                         f"got {value!r}")
    return number


def _window(start, end, where: str) -> tuple[float | None, float | None]:
    if start is not None and end is not None and end <= start:
        raise ValueError(f"{where}: 'end' ({end:g}) must be after 'start' ({start:g}); both "
                         f"are seconds from the start of the video file")
    return start, end


class _Merger:
    """CaptionedVideos keyed by (path, start, end) in order of first appearance."""

    def __init__(self):
        self._items: dict[tuple, CaptionedVideo] = {}

    def add(self, path: str, captions: Iterable[str], start=None, end=None, video_id="") -> None:
        key = (os.path.normpath(path), start, end)
        item = self._items.get(key)
        if item is None:
            self._items[key] = CaptionedVideo(path, list(captions), start, end, video_id)
        else:
            item.captions.extend(captions)

    def videos(self) -> list[CaptionedVideo]:
        return list(self._items.values())


def _join(root: Path, relative: str) -> str:
    return os.path.join(root, relative)


def _csv_rows(path: Path, what: str, delimiter: str = ","):
    """(line number, fields) of the non-blank rows of a UTF-8 CSV file."""
    reader = csv.reader(_read_lines(path, what), delimiter=delimiter)
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, row
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: the {what} is not valid CSV ({exc}); "
                         f"quote fields that contain commas or quotes") from None


def _header(path: Path, rows, required: Sequence[str], what: str, example: str):
    """Column name -> index from the first row; a missing column raises with the fix."""
    try:
        lineno, first = next(rows)
    except StopIteration:
        raise ValueError(f"{path}: the {what} is empty; expected a header line "
                         f"'{example}' and one row per caption") from None
    columns = {cell.strip().strip('"\'').strip().lower(): i for i, cell in enumerate(first)}
    missing = [name for name in required if name not in columns]
    if missing:
        raise ValueError(f"{path}:{lineno}: the {what} has no {', '.join(repr(m) for m in missing)} "
                         f"column (its header is {first}); the first line must name the columns, "
                         f"e.g. '{example}'")
    return columns, len(first)


def _cell(row, columns, name, path, lineno, width):
    index = columns[name]
    if index >= len(row):
        raise ValueError(f"{path}:{lineno}: expected {width} fields as in the header, got "
                         f"{len(row)} ({row}); a field that contains a comma must be quoted")
    return row[index]


# --------------------------------------------------------------------------- generic formats

def _read_jsonl(path: Path, root: Path) -> list[CaptionedVideo]:
    merger = _Merger()
    fix = f"every line needs a non-empty caption, e.g. {_GENERIC_EXAMPLE}"
    for lineno, raw in enumerate(_read_lines(path, "captions file"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if lineno == 1 and line in ("[", "{"):
                hint = (" (this looks like one JSON document, not JSON Lines: for DiDeMo or "
                        "ActivityNet Captions use read_didemo/read_activitynet, for "
                        "MSRVTT_data.json read_msrvtt)")
            raise ValueError(f"{where}: not a JSON object ({exc.msg} at column {exc.colno}){hint}; "
                             f"each line must be one object like {_GENERIC_EXAMPLE}") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a JSON object like {_GENERIC_EXAMPLE}, got "
                             f"{type(entry).__name__}")
        video = entry.get("video")
        if not isinstance(video, str) or not video.strip():
            raise ValueError(f"{where}: missing 'video' (the video path relative to the data "
                             f"root); expected an object like {_GENERIC_EXAMPLE}")
        if "captions" in entry and "caption" in entry:
            raise ValueError(f"{where}: give either 'captions' (a list) or 'caption' (one "
                             f"string), not both")
        if "captions" in entry:
            value = entry["captions"]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value:
                raise ValueError(f"{where}: 'captions' must be a non-empty list of strings; {fix}")
        elif "caption" in entry:
            value = [entry["caption"]]
        else:
            raise ValueError(f"{where}: missing 'captions' (or 'caption'); {fix}")
        captions = [_caption_text(c, where, fix) for c in value]
        start = _seconds(entry.get("start"), where, "start")
        end = _seconds(entry.get("end"), where, "end")
        start, end = _window(start, end, where)
        video = video.strip()
        merger.add(_join(root, video), captions, start, end, video)
    return merger.videos()


def _read_generic_csv(path: Path, root: Path) -> list[CaptionedVideo]:
    merger = _Merger()
    rows = _csv_rows(path, "captions file")
    columns, width = _header(path, rows, ("video", "caption"), "captions file",
                             "video,caption")
    fix = "every row needs a video path and a non-empty caption"
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        if len(row) != width:
            raise ValueError(f"{where}: expected {width} fields as in the header, got {len(row)} "
                             f"({row}); a caption that contains a comma must be quoted")
        video = row[columns["video"]].strip()
        if not video:
            raise ValueError(f"{where}: empty 'video' field; {fix}")
        caption = _caption_text(row[columns["caption"]], where, fix)
        start = _seconds(row[columns["start"]], where, "start") if "start" in columns else None
        end = _seconds(row[columns["end"]], where, "end") if "end" in columns else None
        start, end = _window(start, end, where)
        merger.add(_join(root, video), [caption], start, end, video)
    return merger.videos()


_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def read_captions(path, data_root=None, format: str | None = None) -> list[CaptionedVideo]:
    """Read a captions file in one of the generic formats (or, by ``format=``, an official one).

    * JSON Lines (``.jsonl``, ``.json``; ``format="jsonl"``): one object per line,
      ``{"video": "rel/path.mp4", "captions": ["...", ...], "start": s, "end": e}`` with
      ``start``/``end`` optional (seconds into the file) and ``"caption": "..."`` accepted for
      a single caption.  Blank lines and ``#`` lines are skipped; other keys are ignored.
    * CSV (``.csv``; ``format="csv"``): a header naming at least ``video`` and ``caption``
      (optional ``start`` and ``end``, seconds), then one row per caption.

    In both, entries with the same video and window are merged into one CaptionedVideo (the
    captions in file order, videos in order of first appearance); the same video with another
    window stays a separate entry.  Paths are relative to ``data_root`` (default: the captions
    file's folder).  ``format`` may also be ``"didemo"``, ``"activitynet"``, ``"lsmdc"`` or
    ``"webvid"`` for those datasets' single-file annotations (see their readers).
    """
    path = _existing(path, "captions file")
    if format is None:
        format = _EXTENSIONS.get(path.suffix.lower())
        if format is None:
            raise ValueError(f"{path}: cannot tell the captions format from the extension "
                             f"'{path.suffix}'; name the file .jsonl or .csv, or pass "
                             f"format= (one of {sorted(CAPTION_FORMATS)})")
    format = str(format).lower()
    if format not in CAPTION_FORMATS:
        raise ValueError(f"unknown captions format {format!r}; choose one of "
                         f"{sorted(CAPTION_FORMATS)}")
    videos = CAPTION_FORMATS[format](path, data_root)
    if not videos:
        raise ValueError(f"{path}: no captioned videos found; expected e.g. {_GENERIC_EXAMPLE} "
                         f"per line (JSON Lines) or 'video,caption' rows (CSV)")
    return videos


# --------------------------------------------------------------------------- MSR-VTT

def read_msrvtt(data_json, split_csv=None, data_root=None,
                video_ext: str = ".mp4") -> list[CaptionedVideo]:
    """MSR-VTT from ``MSRVTT_data.json`` and a split csv.

    Follows the MSR-VTT 10K release's JSON description (``{"info", "videos": [{"video_id",
    "category", "url", "start time", "end time", "split", "id"}], "sentences": [{"sen_id",
    "video_id", "caption"}]}``; ``MSRVTT_data.json`` is that layout for all 10,000 videos, as
    distributed with CLIP4Clip's ``msrvtt_data``) and the JSFusion/CLIP4Clip split files:

    * ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv``: a ``video_id`` column; each video gets
      all its sentences from the JSON (about 20), in JSON order;
    * ``MSRVTT_JSFUSION_test.csv`` (the 1k-A test): columns ``key,vid_key,video_id,sentence``;
      each test video gets exactly the one sentence of its row, not the JSON's 20.

    Without ``split_csv`` every video of the JSON is returned with all its sentences.  Videos
    are ``<data_root>/<video_id><video_ext>`` (``video0.mp4``); the JSON's start/end times refer
    to the source YouTube video, not to the released clip, so the whole clip is used.  A split
    naming a video the JSON does not have raises ``ValueError`` with ``file:line``.
    """
    data_json = _existing(data_json, "MSR-VTT annotation file")
    root = _root(data_json, data_root)
    data = _load_json(data_json, "MSR-VTT annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise ValueError(f"{data_json}: expected the MSR-VTT layout {{\"videos\": [...], "
                         f"\"sentences\": [{{\"video_id\", \"caption\", \"sen_id\"}}, ...]}}; "
                         f"no 'sentences' list found (use MSRVTT_data.json or "
                         f"train_val_videodatainfo.json)")
    order: list[str] = []
    for i, video in enumerate(data.get("videos") or []):
        if not isinstance(video, dict) or not isinstance(video.get("video_id"), str):
            raise ValueError(f"{data_json}: videos[{i}] has no 'video_id' string; expected "
                             f"entries like {{\"video_id\": \"video0\", ...}}")
        order.append(video["video_id"])
    sentences: dict[str, list[str]] = {}
    fix = "every sentence needs a 'video_id' and a non-empty 'caption'"
    for i, sentence in enumerate(data["sentences"]):
        where = f"{data_json}: sentences[{i}]"
        if not isinstance(sentence, dict) or not isinstance(sentence.get("video_id"), str):
            raise ValueError(f"{where} has no 'video_id' string; {fix}")
        if "caption" not in sentence:
            raise ValueError(f"{where} (video_id '{sentence['video_id']}') has no 'caption'; {fix}")
        text = _caption_text(sentence["caption"], f"{where} (video_id '{sentence['video_id']}')",
                             fix)
        sentences.setdefault(sentence["video_id"], []).append(text)
    known = set(order) | set(sentences)

    def path_of(video_id: str) -> str:
        return _join(root, f"{video_id}{video_ext}")

    if split_csv is None:
        ids = list(dict.fromkeys(order + list(sentences)))
        return [CaptionedVideo(path_of(v), list(sentences[v]), video_id=v)
                for v in ids if v in sentences]

    split_csv = _existing(split_csv, "MSR-VTT split file")
    rows = _csv_rows(split_csv, "MSR-VTT split file")
    columns, width = _header(split_csv, rows, ("video_id",), "MSR-VTT split file",
                             "video_id (MSRVTT_train.9k.csv) or key,vid_key,video_id,sentence "
                             "(MSRVTT_JSFUSION_test.csv)")
    one_caption = "sentence" in columns
    merger = _Merger()
    seen: set[str] = set()
    for lineno, row in rows:
        where = f"{split_csv}:{lineno}"
        video_id = _cell(row, columns, "video_id", split_csv, lineno, width).strip()
        if video_id not in known:
            raise ValueError(f"{where}: video id '{video_id}' is not in {data_json}; use the "
                             f"annotation file of the same release (MSRVTT_data.json covers all "
                             f"10,000 videos) or remove the line")
        if one_caption:
            text = _caption_text(_cell(row, columns, "sentence", split_csv, lineno, width),
                                 where, "every test row needs its query sentence")
            merger.add(path_of(video_id), [text], video_id=video_id)
            continue
        if video_id not in sentences:
            raise ValueError(f"{where}: video '{video_id}' has no sentences in {data_json}; "
                             f"use an annotation file that has its captions")
        if video_id in seen:
            logger.warning("%s: video '%s' is listed more than once; it is kept once", where,
                           video_id)
            continue
        seen.add(video_id)
        merger.add(path_of(video_id), list(sentences[video_id]), video_id=video_id)
    videos = merger.videos()
    if not videos:
        raise ValueError(f"{split_csv}: no video ids found below the header")
    return videos


# --------------------------------------------------------------------------- MSVD

def _refuse_pickle(path, what: str, instead: str) -> None:
    if Path(path).suffix.lower() in (".pkl", ".pickle", ".p"):
        raise ValueError(f"{path}: pickle files are not loaded (unpickling can run arbitrary "
                         f"code); give the {what} as text instead: {instead}")


def _id_lines(path: Path, what: str):
    for lineno, raw in enumerate(_read_lines(path, what), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield lineno, line


def read_msvd(descriptions, split_file=None, data_root=None,
              video_ext: str = ".avi") -> list[CaptionedVideo]:
    """MSVD (Microsoft Research Video Description corpus) from its plain-text release.

    Follows the corpus's ``AllVideoDescriptions.txt`` (the English descriptions published with
    the YouTube clips by Chen & Dolan, 2011): ``#`` comment lines, then one ``<videoid>
    <caption words ...>`` line per description, the video id being the clip name
    (``-4wsuPCjDBc_5_15``), about 40 lines per video.  The split files are the ones distributed
    with CLIP4Clip's ``msvd_data`` (``train_list.txt``, ``val_list.txt``, ``test_list.txt``):
    one video id per line.  Every caption of a video is kept, so on the test split every
    description is a query.  Videos are ``<data_root>/<videoid><video_ext>``
    (``YouTubeClips/<videoid>.avi``).  Pickles (``raw-captions.pkl``) are refused.
    """
    _refuse_pickle(descriptions, "MSVD captions",
                   "AllVideoDescriptions.txt (lines '<videoid> <caption>'), from the MSVD "
                   "release")
    if split_file is not None:
        _refuse_pickle(split_file, "MSVD split",
                       "train_list.txt / val_list.txt / test_list.txt, one video id per line")
    descriptions = _existing(descriptions, "MSVD descriptions file")
    root = _root(descriptions, data_root)
    captions: dict[str, list[str]] = {}
    for lineno, line in _id_lines(descriptions, "MSVD descriptions file"):
        parts = line.split(None, 1)
        if len(parts) < 2 or not parts[1].strip():
            raise ValueError(f"{descriptions}:{lineno}: video '{parts[0]}' has no caption text; "
                             f"every line must be '<videoid> <caption words>' (remove the line "
                             f"or add its caption)")
        captions.setdefault(parts[0], []).append(" ".join(parts[1].split()))
    if not captions:
        raise ValueError(f"{descriptions}: no descriptions found; expected lines "
                         f"'<videoid> <caption words>'")

    def make(video_id: str) -> CaptionedVideo:
        return CaptionedVideo(_join(root, f"{video_id}{video_ext}"), list(captions[video_id]),
                              video_id=video_id)

    if split_file is None:
        return [make(v) for v in captions]
    split_file = _existing(split_file, "MSVD split file")
    videos, seen = [], set()
    for lineno, video_id in _id_lines(split_file, "MSVD split file"):
        video_id = video_id.split()[0]
        if video_id not in captions:
            raise ValueError(f"{split_file}:{lineno}: video id '{video_id}' is not in "
                             f"{descriptions}; use the split files of the same release (ids "
                             f"are clip names such as '-4wsuPCjDBc_5_15') or remove the line")
        if video_id in seen:
            logger.warning("%s:%d: video '%s' is listed more than once; it is kept once",
                           split_file, lineno, video_id)
            continue
        seen.add(video_id)
        videos.append(make(video_id))
    if not videos:
        raise ValueError(f"{split_file}: no video ids found; expected one per line")
    return videos


# --------------------------------------------------------------------------- DiDeMo

def _with_extension(name: str, video_ext: str | None) -> str:
    if not video_ext or name.lower().endswith(video_ext.lower()):
        return name
    return name + video_ext


def read_didemo(path, data_root=None, video_ext: str | None = ".mp4") -> list[CaptionedVideo]:
    """DiDeMo for paragraph-to-video retrieval, from ``{train,val,test}_data.json``.

    Follows the LocalizingMoments (Hendricks et al., ICCV 2017) data README: a JSON list of
    moment annotations ``{"annotation_id", "description", "video", "times": [[s, e], ...],
    "dl_link", "num_segments"}``, several per video, ``times`` in 5-second chunks.  As CLIP4Clip
    evaluates DiDeMo, all descriptions of a video are joined with a space, in file order, into
    ONE caption for the whole video (no window).  The file is
    ``<data_root>/<video><video_ext>``: the repository's AWS download script saves
    ``<video>.mp4`` (``x.mov`` -> ``x.mov.mp4``); a name that already ends with ``video_ext`` is
    kept, and ``video_ext=""`` keeps the names as written (the Flickr download).
    """
    path = _existing(path, "DiDeMo annotation file")
    root = _root(path, data_root)
    data = _load_json(path, "DiDeMo annotation file")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected the DiDeMo layout, a JSON list of "
                         f"{{\"video\", \"description\", \"times\", ...}} entries, got "
                         f"{type(data).__name__}")
    texts: dict[str, list[str]] = {}
    fix = "every entry needs a 'video' and a non-empty 'description'"
    for i, entry in enumerate(data):
        where = f"{path}: entry [{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object; {fix}")
        if "annotation_id" in entry:
            where += f" (annotation_id {entry['annotation_id']})"
        video = entry.get("video")
        if isinstance(video, bool) or not isinstance(video, (str, int)) or not str(video).strip():
            raise ValueError(f"{where} has no 'video'; {fix}")
        if "description" not in entry:
            raise ValueError(f"{where} has no 'description'; {fix}")
        text = _caption_text(entry["description"], where, fix)
        texts.setdefault(str(video).strip(), []).append(text)
    if not texts:
        raise ValueError(f"{path}: no annotations found")
    return [CaptionedVideo(_join(root, _with_extension(video, video_ext)), [" ".join(parts)],
                           video_id=video) for video, parts in texts.items()]


# --------------------------------------------------------------------------- ActivityNet

def read_activitynet(path, data_root=None, video_ext: str = ".mp4") -> list[CaptionedVideo]:
    """ActivityNet Captions for paragraph-to-video retrieval, from ``train.json`` / ``val_1.json``.

    Follows the ActivityNet Captions release (Krishna et al., ICCV 2017): one JSON object
    ``{"v_<youtube id>": {"duration": d, "timestamps": [[s, e], ...], "sentences": [...]}}``.
    As CLIP4Clip evaluates it (val_1 as the test set), a video's sentences, each stripped, are
    joined with a space into ONE caption for the whole video.  The file is
    ``<data_root>/<key><video_ext>`` (``v_QOlSCBRmfWY.mp4``).
    """
    path = _existing(path, "ActivityNet Captions file")
    root = _root(path, data_root)
    data = _load_json(path, "ActivityNet Captions file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected the ActivityNet Captions layout {{\"v_<id>\": "
                         f"{{\"duration\", \"timestamps\", \"sentences\"}}}}, got "
                         f"{type(data).__name__}")
    videos = []
    fix = "every video needs a non-empty 'sentences' list of non-empty strings"
    for key, entry in data.items():
        where = f"{path}: '{key}'"
        if not isinstance(entry, dict) or "sentences" not in entry:
            raise ValueError(f"{where} has no 'sentences'; {fix}")
        sentences = entry["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise ValueError(f"{where}: 'sentences' must be a non-empty list; {fix}")
        parts = [_caption_text(s, f"{where} sentences[{k}]", fix) for k, s in enumerate(sentences)]
        videos.append(CaptionedVideo(_join(root, f"{key}{video_ext}"), [" ".join(parts)],
                                     video_id=key))
    if not videos:
        raise ValueError(f"{path}: no videos found")
    return videos


# --------------------------------------------------------------------------- LSMDC

_LSMDC_TIME = re.compile(r"\d+\.\d+\.\d+\.\d+")
_LSMDC_FIELDS = ("clip id, start aligned, end aligned, start extracted, end extracted, "
                 "sentence")


def read_lsmdc(path, data_root=None, video_ext: str = ".avi") -> list[CaptionedVideo]:
    """LSMDC (Large Scale Movie Description Challenge) from an LSMDC16 annotation csv.

    Follows the LSMDC 2016 challenge README: tab-separated, no header, one line per clip
    ``<CLIP_ID>\\t<START_ALIGNED>\\t<END_ALIGNED>\\t<START_EXTRACTED>\\t<END_EXTRACTED>\\t<SENTENCE>``
    with time stamps ``hh.mm.ss.mmm`` into the movie (the retrieval task's files add a
    seventh column, the paraphrased sentence, which is ignored).  Fields are split on tabs
    only (sentences keep their commas and quotes).  The clip files are already cut, so the
    times are not used as a window.  The file is ``<data_root>/<movie>/<CLIP_ID><video_ext>``,
    the movie folder being the clip id up to its last ``_``
    (``0001_American_Beauty_00.00.51.926-00.00.54.129`` -> ``0001_American_Beauty/``), the
    layout of the LSMDC video download.
    """
    path = _existing(path, "LSMDC annotation file")
    root = _root(path, data_root)
    merger = _Merger()
    for lineno, raw in enumerate(_read_lines(path, "LSMDC annotation file"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        fields = raw.rstrip("\r\n").split("\t")
        if len(fields) < 6:
            raise ValueError(f"{where}: expected 6 tab-separated fields ({_LSMDC_FIELDS}), got "
                             f"{len(fields)}; the fields must be separated by TAB characters")
        clip_id = fields[0].strip()
        if not clip_id:
            raise ValueError(f"{where}: empty clip id; expected {_LSMDC_FIELDS}")
        bad = [t for t in fields[1:5] if not _LSMDC_TIME.fullmatch(t.strip())]
        if bad:
            raise ValueError(f"{where}: '{bad[0]}' is not a time stamp hh.mm.ss.mmm; expected "
                             f"{_LSMDC_FIELDS} separated by tabs")
        text = _caption_text(fields[5], where, "every clip needs its sentence in the 6th field")
        movie = clip_id.rsplit("_", 1)[0] if "_" in clip_id else ""
        relative = os.path.join(movie, f"{clip_id}{video_ext}") if movie else f"{clip_id}{video_ext}"
        merger.add(_join(root, relative), [text], video_id=clip_id)
    videos = merger.videos()
    if not videos:
        raise ValueError(f"{path}: no clips found; expected lines of {_LSMDC_FIELDS}")
    return videos


# --------------------------------------------------------------------------- WebVid

def read_webvid(path, data_root=None, video_ext: str = ".mp4") -> list[CaptionedVideo]:
    """WebVid-style csv (WebVid-2M/10M metadata): ``videoid,contentUrl,duration,page_dir,name``.

    Follows the WebVid release's csv header; only ``videoid``, ``page_dir`` and ``name`` are
    needed.  The file is ``<data_root>/<page_dir>/<videoid><video_ext>`` (the layout of the
    WebVid download scripts), the caption is ``name``; rows of the same video are merged.
    """
    path = _existing(path, "WebVid csv")
    root = _root(path, data_root)
    rows = _csv_rows(path, "WebVid csv")
    columns, width = _header(path, rows, ("videoid", "page_dir", "name"), "WebVid csv",
                             "videoid,contentUrl,duration,page_dir,name")
    merger = _Merger()
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        video_id = _cell(row, columns, "videoid", path, lineno, width).strip()
        page_dir = _cell(row, columns, "page_dir", path, lineno, width).strip()
        if not video_id or not page_dir:
            raise ValueError(f"{where}: empty 'videoid' or 'page_dir'; every row needs both")
        text = _caption_text(_cell(row, columns, "name", path, lineno, width), where,
                             "every row needs its caption in 'name'")
        merger.add(_join(root, os.path.join(page_dir, f"{video_id}{video_ext}")), [text],
                   video_id=video_id)
    videos = merger.videos()
    if not videos:
        raise ValueError(f"{path}: no rows found below the header")
    return videos


# Formats read_captions knows, by name.
CAPTION_FORMATS: dict[str, Callable[[Path, object], list[CaptionedVideo]]] = {
    "jsonl": lambda path, root: _read_jsonl(path, _root(path, root)),
    "csv": lambda path, root: _read_generic_csv(path, _root(path, root)),
    "didemo": lambda path, root: read_didemo(path, root),
    "activitynet": lambda path, root: read_activitynet(path, root),
    "lsmdc": lambda path, root: read_lsmdc(path, root),
    "webvid": lambda path, root: read_webvid(path, root),
}


# --------------------------------------------------------------------------- dataset

class CaptionDataset(SeededEpochs, Dataset):
    """Captioned videos -> clips and captions, or ``{"unreadable": index}``.

    Frames: ``num_frames`` indices segment-style (TSN) over the whole video, or over
    ``[start, end]`` seconds when the entry has a window (converted with the reader's fps,
    clamped to the video): one random frame per segment in training, the segment centres at
    test.  Items: training ``{"video": (C, T, H, W), "caption": one caption, "index": i}`` with
    the caption drawn among the video's captions; test ``{"video", "captions": all captions,
    "index"}``.  ``transform`` defaults to a VideoTransform of ``size`` with CLIP mean/std;
    ``decode_short_side`` decodes frames already shrunk, as in VideoDataset (``datasets.decode_size``).

    Randomness (caption, frames, crop) comes from ``item_rng(index)``, a numpy Generator seeded by
    (seed, epoch, index) as in VideoDataset, so an item does not depend on the worker that loads
    it; call ``set_epoch`` before each epoch (the epoch lives in shared memory).  A missing or
    broken video is logged on the ``adaptvid.data`` logger and returned as
    ``{"unreadable": index}``; ``collate_captions`` drops and counts it.
    """

    def __init__(self, videos: Sequence[CaptionedVideo], num_frames: int = 12,
                 transform: Callable | None = None, train: bool = True,
                 backend: str | None = None, seed: int = 0, *, size: int = 224,
                 decode_short_side: int | str | None = None):
        self.videos = list(videos)
        for i, video in enumerate(self.videos):
            if isinstance(video.captions, str) or not video.captions:
                raise ValueError(f"video {i} ('{video.path}') needs a non-empty list of "
                                 f"captions, got {video.captions!r}")
        if int(num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        self.train = bool(train)
        self.backend = backend
        self._init_epochs(seed)
        self.transform = transform if transform is not None else VideoTransform(
            size, CLIP_MEAN, CLIP_STD, train=train)
        self.decode_short_side = decode_size(decode_short_side, self.transform, self.train)

    def __len__(self) -> int:
        return len(self.videos)

    def frame_window(self, video: CaptionedVideo, num_total: int, fps: float) -> tuple[int, int]:
        """The frames ``[first, stop)`` of a video of ``num_total`` frames the captions describe.

        ``start`` -> ``floor(start * fps)``, ``end`` -> ``ceil(end * fps)``, both clamped into
        the video; the window keeps at least one frame (a start past the end gives the last
        frame).  Without a usable fps (0) the whole video is used.
        """
        if video.start is None and video.end is None:
            return 0, num_total
        if not fps or fps <= 0:
            logger.warning("%s: the reader reports no frame rate, so the window %s-%s s cannot "
                           "be located; using the whole video", video.path, video.start, video.end)
            return 0, num_total
        first = 0 if video.start is None else int(math.floor(video.start * fps + 1e-6))
        stop = num_total if video.end is None else int(math.ceil(video.end * fps - 1e-6))
        first = min(max(first, 0), num_total - 1)
        stop = min(max(stop, first + 1), num_total)
        return first, stop

    def frame_indices(self, video: CaptionedVideo, num_total: int, fps: float,
                      rng: np.random.Generator | None = None) -> list[int]:
        """The ``num_frames`` frame indices read for ``video`` (``rng`` drives training)."""
        first, stop = self.frame_window(video, num_total, fps)
        offsets = segment_indices(stop - first, self.num_frames, self.train, rng)
        return [first + k for k in offsets]

    def _apply(self, frames: np.ndarray, rng) -> torch.Tensor:
        if isinstance(self.transform, VideoTransform):
            return self.transform(frames, rng=rng)
        return self.transform(frames)

    def __getitem__(self, index: int):
        video = self.videos[index]
        rng = self.item_rng(index) if self.train else None
        caption = None
        if self.train:
            caption = video.captions[int(rng.integers(len(video.captions)))]
        try:
            reader = open_video(video.path, backend=self.backend, short_side=self.decode_short_side)
            frames = reader.get_frames(self.frame_indices(video, len(reader), reader.fps, rng))
            clip = self._apply(frames, rng)
        except VideoReadError as exc:
            logger.warning("skipping unreadable video: %s", exc)
            return {"unreadable": int(index)}
        if self.train:
            return {"video": clip, "caption": caption, "index": int(index)}
        return {"video": clip, "captions": list(video.captions), "index": int(index)}


def collate_captions(batch: Sequence[dict | None]) -> dict:
    """Stack CaptionDataset items, dropping unreadable ones (``{"unreadable": i}`` or None).

    Returns ``{"video": (B, C, T, H, W) or None, "caption": list[str]`` (training items) or
    ``"captions": list[list[str]]`` (test items), ``"index": LongTensor (B,), "skipped": int,
    "skipped_indices": LongTensor}`` — the keys of ``collate_videos`` with the captions in
    place of the labels.  When every item was dropped, "video" is None, "index" is empty and
    both "caption" and "captions" are empty lists.
    """
    kept = [item for item in batch if item is not None and "unreadable" not in item]
    unreadable = [item["unreadable"] for item in batch if item is not None and "unreadable" in item]
    lost = torch.tensor(unreadable, dtype=torch.long)
    skipped = len(batch) - len(kept)
    if not kept:
        empty = torch.zeros(0, dtype=torch.long)
        return {"video": None, "caption": [], "captions": [], "index": empty, "skipped": skipped,
                "skipped_indices": lost}
    training = ["caption" in item for item in kept]
    if any(training) and not all(training):
        raise ValueError("collate_captions got training items (one 'caption') and test items "
                         "('captions') in the same batch; use one CaptionDataset per loader")
    out = {"video": torch.stack([item["video"] for item in kept])}
    if training[0]:
        out["caption"] = [item["caption"] for item in kept]
    else:
        out["captions"] = [list(item["captions"]) for item in kept]
    out.update(index=torch.tensor([item["index"] for item in kept], dtype=torch.long),
               skipped=skipped, skipped_indices=lost)
    return out
