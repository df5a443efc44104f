"""HMDB51 from the official ``testTrainMulti_7030_splits`` files: ``<class>_test_split{1,2,3}.txt`` per
class, lines ``<video>.avi <flag>`` with flag 1 = train, 2 = test, 0 = not used in that split. Videos live
under ``<class>/<video>.avi``; classes are the file names' class parts, sorted. The test videos become
``val.txt`` (the papers evaluate on them)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from .common import Annotated, PrepareReport, annotation_lines, write_prepared
from .ucf101 import split_folders

SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>[123])\.txt$")
FLAGS = {"1": "train.txt", "2": "val.txt"}


def hmdb_split_files(annotations) -> dict[str, dict[int, Path]]:
    """{class: {split number: file}} of the split files in ``annotations``."""
    folder = Path(annotations)
    if not folder.is_dir():
        raise FileNotFoundError(f"HMDB51 split folder not found: '{folder}' (the testTrainMulti_7030_splits folder)")
    files: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = SPLIT_FILE.match(path.name)
        if match:
            files.setdefault(match["cls"], {})[int(match["n"])] = path
    if not files:
        raise ValueError(f"{folder}: no '<class>_test_split<1|2|3>.txt' files found; pass the folder "
                         "testTrainMulti_7030_splits from the HMDB51 split archive")
    return files


def read_hmdb_split(path, class_name: str, label: int) -> dict[str, list[Annotated]]:
    lists = {name: [] for name in FLAGS.values()}
    for lineno, line in annotation_lines(path, "HMDB51 split file"):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}:{lineno}: expected '<video>.avi <flag>' with flag 0 (unused), "
                             f"1 (train) or 2 (test), got '{line}'")
        if fields[1] in FLAGS:
            video = fields[0]
            lists[FLAGS[fields[1]]].append(Annotated(Path(video).stem, label, f"{class_name}/{video}", class_name))
    return lists


def prepare_hmdb51(annotations, video_root, output_dir, split: Union[int, str] = "all", overwrite: bool = False,
                   absolute: bool = False) -> PrepareReport:
    """Write train.txt and val.txt per split, classes.txt, missing.txt and report.txt."""
    files = hmdb_split_files(annotations)
    class_names = sorted(files)
    lists = {}
    for number, folder in split_folders(split):
        lacking = [c for c in class_names if number not in files[c]]
        if lacking:
            raise FileNotFoundError(f"{annotations}: no {lacking[0]}_test_split{number}.txt "
                                    f"({len(lacking)} classes lack split {number}); every class has one file per split")
        for label, name in enumerate(class_names):
            for role, items in read_hmdb_split(files[name][number], name, label).items():
                lists.setdefault(folder + role, []).extend(items)
    return write_prepared("hmdb51", output_dir, class_names, lists, video_root, overwrite, absolute)
