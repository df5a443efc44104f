"""Kinetics-400/600/700 from the official csv files (``label,youtube_id,time_start,time_end,split[,is_cc]``).

Videos are found by their usual names, ``<youtube_id>_<start:06d>_<end:06d>`` (or just ``<youtube_id>``)
with any video extension, flat or under ``<label>/`` folders (any depth: ``train/<label>/...``); class names
are the labels sorted as Python sorts strings, as the standard label maps are (label i = line i).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional, Sequence

from ..lists import read_class_names
from .common import Annotated, PrepareReport, VideoIndex, annotation_lines, write_prepared

COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "validate": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}


def _seconds(text: str, path, lineno: int, column: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0 or value != int(value):
        raise ValueError(f"{path}:{lineno}: {column} '{text}' is not a whole number of seconds; "
                         f"the Kinetics csv has e.g. '14' or '14.0'")
    return int(value)


def read_kinetics_csv(path) -> list[dict]:
    """The rows of an official Kinetics csv as dicts with label, youtube_id, time_start, time_end (ints) and
    split (train / val / test; from the split column, else the file name). Header required."""
    rows, header = [], None
    for lineno, line in annotation_lines(path, "Kinetics csv"):
        fields = [f.strip() for f in next(csv.reader([line]))]
        if header is None:
            header = [f.lower() for f in fields]
            absent = [c for c in COLUMNS if c not in header and c != "split"]
            if "label" not in header and "youtube_id" in header:
                raise ValueError(f"{path}:{lineno}: this csv has no label column (Kinetics' test.csv for "
                                 "the challenge ships without labels); pass the csv files with labels")
            if absent:
                raise ValueError(f"{path}:{lineno}: expected the Kinetics header "
                                 f"'{','.join(COLUMNS)}[,is_cc]', got '{line}'")
            continue
        if len(fields) != len(header):
            raise ValueError(f"{path}:{lineno}: expected {len(header)} fields ({','.join(header)}), got "
                             f"{len(fields)} in '{line}'; quote a label that contains a comma")
        row = dict(zip(header, fields))
        if not row["label"] or not row["youtube_id"]:
            raise ValueError(f"{path}:{lineno}: empty label or youtube_id in '{line}'")
        split_text = row.get("split") or Path(path).stem
        split = SPLIT_NAMES.get(split_text.lower())
        if split is None:
            raise ValueError(f"{path}:{lineno}: split '{split_text}' is none of train, val (validate), test")
        rows.append({"label": row["label"], "youtube_id": row["youtube_id"], "split": split,
                     "time_start": _seconds(row["time_start"], path, lineno, "time_start"),
                     "time_end": _seconds(row["time_end"], path, lineno, "time_end"), "line": lineno})
    if not rows:
        raise ValueError(f"{path}: no rows found; expected the header '{','.join(COLUMNS)}' then one clip per line")
    return rows


def clip_stem(row: dict) -> str:
    return f"{row['youtube_id']}_{row['time_start']:06d}_{row['time_end']:06d}"


def kinetics_classes(rows: Sequence[dict]) -> list[str]:
    """The standard label map: every label of the rows, sorted."""
    return sorted({row["label"] for row in rows})


def _layout(index: VideoIndex, rows: Sequence[dict]) -> str:
    """'label folders' when most found videos sit in a folder named like their label, else 'flat'."""
    in_label = total = 0
    for row in rows[:2000]:
        found = index.by_stem.get(clip_stem(row)) or index.by_stem.get(row["youtube_id"])
        if found:
            total += 1
            parent = os.path.basename(os.path.dirname(found[0])).replace("_", " ").lower()
            in_label += parent == row["label"].replace("_", " ").lower()
    return "label folders" if total and in_label * 2 > total else "flat"


def kinetics_lists(rows: Sequence[dict], class_names: Sequence[str], source: str = "") -> dict:
    """{"train.txt": [Annotated], "val.txt": ..., "test.txt": ...} for the rows' splits."""
    label_of = {name: i for i, name in enumerate(class_names)}
    lists: dict[str, list] = {}
    for row in rows:
        if row["label"] not in label_of:
            raise ValueError(f"{source}:{row['line']}: label '{row['label']}' is not in the class names "
                             f"({len(class_names)} classes); pass a class file that has it")
        stem = clip_stem(row)
        lists.setdefault(f"{row['split']}.txt", []).append(
            Annotated(stem, label_of[row["label"]], f"{stem}.mp4", row["label"]))
    order = ["train.txt", "val.txt", "test.txt"]
    return {name: lists[name] for name in order if name in lists}


class _KineticsIndex(VideoIndex):
    """Also accepts videos named by the bare youtube id."""

    def find(self, item: Annotated):
        found = super().find(item)
        if found is None:
            bare = item.stem[:-14]   # "<id>_000014_000024" -> "<id>"
            if bare in self.by_stem:
                return super().find(Annotated(bare, item.label, item.expected, item.class_folder))
        return found


def prepare_kinetics(csv_files: Sequence, video_root, output_dir, classes: Optional[str] = None,
                     overwrite: bool = False, absolute: bool = False) -> PrepareReport:
    """Write train.txt / val.txt (/ test.txt), classes.txt, missing.txt and report.txt for Kinetics.

    ``csv_files``: the official csvs (train.csv, validate.csv, and test.csv where it has labels).
    ``classes``: a class file to number the labels by (default: the labels of the csvs, sorted).
    """
    if not csv_files:
        raise ValueError("no Kinetics csv given; pass train.csv and validate.csv")
    lists: dict[str, list] = {}
    all_rows = []
    per_file = [(str(path), read_kinetics_csv(path)) for path in csv_files]
    for _, rows in per_file:
        all_rows.extend(rows)
    class_names = read_class_names(classes) if classes else kinetics_classes(all_rows)
    for path, rows in per_file:
        for name, items in kinetics_lists(rows, class_names, path).items():
            lists.setdefault(name, []).extend(items)
    wanted = {i.stem for items in lists.values() for i in items} | {r["youtube_id"] for r in all_rows}
    index = _KineticsIndex(video_root, wanted)
    report = PrepareReport("kinetics", str(output_dir), len(class_names))
    report.notes.append(f"videos found in a {_layout(index, all_rows)} layout")
    return write_prepared("kinetics", output_dir, class_names, lists, video_root, overwrite, absolute, index, report)
