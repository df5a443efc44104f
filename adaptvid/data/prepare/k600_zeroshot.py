"""The Kinetics-600 zero-shot protocol (Chen & Huang, ER-ZSAR, ICCV 2021; used by X-CLIP and ViFi-CLIP):
the K600 classes that are not K400 classes (220 with the official files) are the novel classes; each of
three test splits holds 160 of them.

How a split is chosen here (deterministic by seed): the novel class names are sorted, shuffled with
``random.Random(seed).shuffle``, and the first ``num_classes`` (160) of the shuffled order form the
split; its classes are then sorted again, so label i of a split is its i-th class alphabetically. Seeds
0, 1, 2 give the three splits. These are *not* the papers' published split files, which this draw does
not reproduce: to evaluate on those, pass them as ``split_files`` (one class name per line, or an
``id,name`` csv).
"""
from __future__ import annotations

import csv
import logging
import random
from pathlib import Path
from typing import Optional, Sequence

from .common import (Annotated, PrepareReport, VideoIndex, annotation_lines, check_free, write_prepared,
                     write_text)
from .kinetics import clip_stem, read_kinetics_csv

logger = logging.getLogger("adaptvid.data")
NOVEL_CLASSES = 220
SPLIT_CLASSES = 160


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


def _is_csv(path) -> bool:
    lines = annotation_lines(path, "class list or Kinetics csv")
    return bool(lines) and "youtube_id" in [f.strip().lower() for f in next(csv.reader([lines[0][1]]))]


def read_names(path) -> list[str]:
    """Class names, one per line, or the ``name`` column of an ``id,name`` csv."""
    lines = annotation_lines(path, "class list")
    if lines and [f.strip().lower() for f in lines[0][1].split(",")][:2] == ["id", "name"]:
        return [next(csv.reader([text]))[1].strip() for _, text in lines[1:]]
    return [text for _, text in lines]


def _classes_and_rows(files: Sequence, what: str):
    names, rows = set(), []
    for path in files:
        if _is_csv(path):
            got = read_kinetics_csv(path)
            rows.extend(dict(r, source=str(path)) for r in got)
            names.update(r["label"] for r in got)
        else:
            names.update(read_names(path))
    if not names:
        raise ValueError(f"no {what} classes read from {list(map(str, files))}")
    return sorted(names), rows


def novel_classes(k400: Sequence[str], k600: Sequence[str]) -> list[str]:
    """The K600 names that are no K400 name (compared ignoring case and repeated spaces), sorted."""
    old = {_norm(n) for n in k400}
    return sorted(n for n in k600 if _norm(n) not in old)


def zeroshot_split(novel: Sequence[str], seed: int, num_classes: int = SPLIT_CLASSES) -> list[str]:
    """``num_classes`` of ``novel``: the first of a ``random.Random(seed)`` shuffle of the sorted names, sorted."""
    if num_classes > len(novel):
        raise ValueError(f"a split of {num_classes} classes needs at least that many novel classes, "
                         f"got {len(novel)}")
    order = sorted(novel)
    random.Random(seed).shuffle(order)
    return sorted(order[:num_classes])


def prepare_k600_zeroshot(k400_files: Sequence, k600_files: Sequence, output_dir, video_root=None,
                          seeds: Sequence[int] = (0, 1, 2), num_classes: int = SPLIT_CLASSES,
                          split_files: Optional[Sequence] = None, overwrite: bool = False,
                          absolute: bool = False) -> PrepareReport:
    """Write ``novel_classes.txt`` and, per split i (1, 2, 3), ``split<i>/classes.txt`` and
    ``split<i>/held_out_classes.txt`` (the novel classes not in the split); with K600 csvs and
    ``video_root``, also ``split<i>/<csv split>.txt`` lists of the split's videos labelled by it.

    ``k400_files`` / ``k600_files``: the official csvs or class lists (one name per line). ``split_files``:
    published split class lists to use instead of the seeded draws (one per split)."""
    k400, _ = _classes_and_rows(k400_files, "Kinetics-400")
    k600, rows = _classes_and_rows(k600_files, "Kinetics-600")
    novel = novel_classes(k400, k600)
    report = PrepareReport("k600-zeroshot", str(output_dir), len(novel))
    if len(novel) != NOVEL_CLASSES:
        message = (f"{len(novel)} K600 classes are not K400 classes; the protocol's novel set has "
                   f"{NOVEL_CLASSES} with the official csvs (check that both class sets are complete)")
        logger.warning(message)
        report.notes.append(message)
    if split_files:
        known = {_norm(n): n for n in k600}
        splits = []
        for path in split_files:
            names = []
            for name in read_names(path):
                if _norm(name) not in known:
                    raise ValueError(f"{path}: class '{name}' is not a Kinetics-600 class")
                names.append(known[_norm(name)])
            splits.append(sorted(set(names)))
        report.notes.append("splits from " + ", ".join(map(str, split_files)))
    else:
        splits = [zeroshot_split(novel, seed, num_classes) for seed in seeds]
        report.notes.append(f"splits drawn with seeds {list(seeds)} ({num_classes} of {len(novel)} novel "
                            "classes each); not the papers' published split files")
    out = Path(output_dir)
    lists = {}
    labels_per_list = {}
    for i, names in enumerate(splits, start=1):
        label_of = {n: j for j, n in enumerate(names)}
        for row in rows:
            if row["label"] in label_of:
                stem = clip_stem(row)
                key = f"split{i}/{row['split']}.txt"
                lists.setdefault(key, []).append(Annotated(stem, label_of[row["label"]], f"{stem}.mp4", row["label"]))
        labels_per_list.update({f"split{i}/classes.txt": names,
                                f"split{i}/held_out_classes.txt": [n for n in novel if n not in label_of]})
    class_files = {"novel_classes.txt": novel, **labels_per_list}
    check_free([out / name for name in class_files], overwrite)
    if lists and video_root is not None:
        index = VideoIndex(video_root, {i.stem for items in lists.values() for i in items})
        # each split has its own classes.txt (its labels); novel_classes.txt is the whole set
        write_prepared("k600-zeroshot", out, novel, lists, video_root, overwrite, absolute, index, report,
                       classes_file=None)
    for name, names in class_files.items():
        report.files[name] = str(write_text(out / name, names))
    if not lists or video_root is None:
        report.files["report"] = str(write_text(out / "report.txt", [report.summary()]))
    return report
