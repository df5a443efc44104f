"""MSR-VTT and MSVD (whose official captions come in two files: the annotations and a split) to adaptvid's
generic captions files: ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl``, one
``{"video": path, "captions": [...]}`` object per line, readable by ``read_captions`` and by
``adapt --task retrieval`` / ``eval --task retrieval`` without a format option. Videos not on disk are
left out, counted and written to ``missing.txt``, as the classification converters do."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ..captions import CaptionedVideo, read_msrvtt, read_msvd
from .common import PrepareReport, check_free, need_file, write_text

MSRVTT_TRAIN = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}


def captions_line(video: CaptionedVideo, path: str) -> str:
    entry = {"video": path, "captions": list(video.captions)}
    if video.start is not None:
        entry["start"] = video.start
    if video.end is not None:
        entry["end"] = video.end
    return json.dumps(entry, ensure_ascii=False)


def write_captioned(dataset: str, output_dir, splits: dict[str, Sequence[CaptionedVideo]], overwrite: bool = False,
                    absolute: bool = False) -> PrepareReport:
    """One captions file per entry of ``splits`` (its key is the file name, e.g. ``train.jsonl``), with the
    videos found on disk (a file or a frame folder), plus ``missing.txt`` and ``report.txt``."""
    out = Path(output_dir)
    found = {name: [v for v in videos if Path(v.path).exists()] for name, videos in splits.items()}
    if not any(found.values()):
        example = next((v.path for videos in splits.values() for v in videos), "?")
        raise ValueError(f"none of the {sum(len(v) for v in splits.values())} annotated videos was found "
                         f"(expected e.g. '{example}'); pass the folder that holds them as the video root")
    check_free([out / name for name in splits] + [out / "missing.txt", out / "report.txt"], overwrite)
    report = PrepareReport(dataset, str(out), 0)
    base = out.resolve()
    for name, videos in splits.items():
        lines = [captions_line(v, str(Path(v.path).resolve()) if absolute else os.path.relpath(Path(v.path).resolve(), base))
                 for v in found[name]]
        report.files[name] = str(write_text(out / name, lines))
        report.listed[name], report.missing[name] = len(lines), len(videos) - len(lines)
    report.files["missing"] = str(write_text(out / "missing.txt", [
        "# videos in the annotations but not found on disk: captions file, expected path"] + [
        f"{name}\t{v.path}" for name, videos in splits.items() for v in videos if not Path(v.path).exists()]))
    report.files["report"] = str(write_text(out / "report.txt", [report.summary()]))
    return report


def prepare_msrvtt(annotations, video_root, output_dir, train_split: str = "9k", overwrite: bool = False,
                   absolute: bool = False) -> PrepareReport:
    """MSR-VTT as CLIP4Clip and later papers use it: ``train.jsonl`` (the 9k or 7k training videos, every
    sentence of each) and ``test.jsonl`` (the 1k-A test: one sentence per video, from
    ``MSRVTT_JSFUSION_test.csv``). ``annotations``: the folder with ``MSRVTT_data.json`` and the split csvs."""
    if train_split not in MSRVTT_TRAIN:
        raise ValueError(f"train_split must be one of {sorted(MSRVTT_TRAIN)} (got {train_split!r})")
    data = need_file(annotations, "MSRVTT_data.json", "MSR-VTT annotations")
    splits = {"train.jsonl": read_msrvtt(data, need_file(annotations, MSRVTT_TRAIN[train_split], "MSR-VTT train split"),
                                         video_root),
              "test.jsonl": read_msrvtt(data, need_file(annotations, "MSRVTT_JSFUSION_test.csv", "MSR-VTT 1k-A test"),
                                        video_root)}
    return write_captioned(f"msrvtt ({train_split} train, 1k-A test)", output_dir, splits, overwrite, absolute)


def prepare_msvd(annotations, video_root, output_dir, overwrite: bool = False, absolute: bool = False) -> PrepareReport:
    """MSVD: ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` from ``AllVideoDescriptions.txt`` and the split
    lists ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt`` (every caption kept: each test caption
    is a query)."""
    descriptions = need_file(annotations, "AllVideoDescriptions.txt", "MSVD descriptions")
    splits = {f"{split}.jsonl": read_msvd(descriptions, need_file(annotations, f"{split}_list.txt", f"MSVD {split} split"),
                                          video_root)
              for split in ("train", "val", "test")}
    return write_captioned("msvd", output_dir, splits, overwrite, absolute)
