"""UCF101 from the official ``ucfTrainTestlist`` files: ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based),
``trainlist0{1,2,3}.txt`` ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", 1-based) and
``testlist0{1,2,3}.txt`` (no label: the class is the folder). Labels are written 0-based (classInd - 1);
the test list becomes ``val.txt``, as the papers evaluate on it (mmaction calls it the val split)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from .common import Annotated, PrepareReport, annotation_lines, need_file, write_prepared

SPLITS = (1, 2, 3)


def read_class_ind(path) -> list[str]:
    """Class names in label order from classInd.txt (its 1-based indices, checked to run 1, 2, 3, ...)."""
    names = []
    for lineno, line in annotation_lines(path, "UCF101 classInd.txt"):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<index> <ClassName>' (e.g. '1 ApplyEyeMakeup'), got '{line}'")
        if int(fields[0]) != len(names) + 1:
            raise ValueError(f"{path}:{lineno}: index {fields[0]} out of order; classInd.txt numbers the "
                             f"classes 1, 2, 3, ... (expected {len(names) + 1})")
        names.append(fields[1])
    if not names:
        raise ValueError(f"{path}: no classes found")
    return names


def read_ucf_list(path, class_names, labelled: bool) -> list[Annotated]:
    """A trainlist (``path label``, 1-based) or testlist (``path``) as 0-based items; a label that
    disagrees with the video's class folder is an error."""
    label_of = {name: i for i, name in enumerate(class_names)}
    items = []
    for lineno, line in annotation_lines(path, "UCF101 split list"):
        fields = line.split()
        expected = "'Class/v_Class_gXX_cYY.avi 1'" if labelled else "'Class/v_Class_gXX_cYY.avi'"
        if len(fields) != (2 if labelled else 1) or "/" not in fields[0]:
            raise ValueError(f"{path}:{lineno}: expected {expected}, got '{line}'")
        rel = fields[0]
        folder = rel.split("/")[0]
        if folder not in label_of:
            raise ValueError(f"{path}:{lineno}: class folder '{folder}' is not in classInd.txt")
        label = label_of[folder]
        if labelled:
            if not fields[1].isdigit() or not 1 <= int(fields[1]) <= len(class_names):
                raise ValueError(f"{path}:{lineno}: label '{fields[1]}' is not a classInd index 1..{len(class_names)}")
            if int(fields[1]) - 1 != label:
                raise ValueError(f"{path}:{lineno}: label {fields[1]} is class '{class_names[int(fields[1]) - 1]}' "
                                 f"in classInd.txt but the video is in folder '{folder}'")
        stem = Path(rel).stem
        items.append(Annotated(stem, label, rel, folder))
    if not items:
        raise ValueError(f"{path}: no videos listed")
    return items


def split_folders(split: Union[int, str]) -> list[tuple[int, str]]:
    """[(split number, sub-folder)]: one split written into the output folder itself, 'all' into split1/2/3."""
    if str(split) == "all":
        return [(n, f"split{n}/") for n in SPLITS]
    if int(split) not in SPLITS:
        raise ValueError(f"split must be 1, 2, 3 or 'all', got {split!r}")
    return [(int(split), "")]


def prepare_ucf101(annotations, video_root, output_dir, split: Union[int, str] = "all", overwrite: bool = False,
                   absolute: bool = False) -> PrepareReport:
    """Write train.txt and val.txt (the test list) per split, classes.txt, missing.txt and report.txt.

    ``annotations``: the ucfTrainTestlist folder; ``video_root``: the UCF-101 folder (``<Class>/<video>.avi``).
    """
    class_names = read_class_ind(need_file(annotations, "classInd.txt", "UCF101 class index"))
    lists = {}
    for number, folder in split_folders(split):
        train = need_file(annotations, f"trainlist0{number}.txt", "UCF101 train list")
        test = need_file(annotations, f"testlist0{number}.txt", "UCF101 test list")
        lists[f"{folder}train.txt"] = read_ucf_list(train, class_names, labelled=True)
        lists[f"{folder}val.txt"] = read_ucf_list(test, class_names, labelled=False)
    return write_prepared("ucf101", output_dir, class_names, lists, video_root, overwrite, absolute)
