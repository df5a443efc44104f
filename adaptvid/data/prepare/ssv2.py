"""Something-Something v2 from the official json files: ``labels.json`` ({class name: "index"}) and
``train.json`` / ``validation.json`` (lists of {"id", "label", "template", "placeholders"}). The class of a
video is its ``template`` with the brackets removed ("Putting [something] on [something]" -> "Putting
something on something"); videos are ``<id>.webm`` or frame folders ``<id>/``."""
from __future__ import annotations

import json
from pathlib import Path

from ..lists import _read_lines
from .common import Annotated, PrepareReport, need_file, write_prepared


def _load_json(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: '{path}'")
    text = "\n".join(_read_lines(path, what))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno}); "
                         "use the file as downloaded from the dataset page") from None


def read_ssv2_labels(path) -> list[str]:
    """Class names in label order from labels.json ({name: "index"}; indices 0..C-1, each once)."""
    data = _load_json(path, "SSv2 labels.json")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected an object {{\"class name\": \"index\"}}")
    names: dict[int, str] = {}
    for name, index in data.items():
        if not str(index).isdigit() or int(index) in names:
            raise ValueError(f"{path}: class '{name}' has index {index!r}; indices are distinct integers")
        names[int(index)] = name
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: indices must run 0..{len(names) - 1} without gaps")
    return [names[i] for i in range(len(names))]


def template_class(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def read_ssv2_split(path, class_names) -> list[Annotated]:
    data = _load_json(path, "SSv2 split json")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{\"id\", \"template\", ...}} objects")
    label_of = {name: i for i, name in enumerate(class_names)}
    items = []
    for n, entry in enumerate(data, start=1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ValueError(f"{path}: entry {n} has no \"id\": {str(entry)[:80]}")
        if "template" not in entry:
            raise ValueError(f"{path}: entry {n} (id {entry['id']}) has no \"template\"; the test json carries "
                             "no labels, pass train.json and validation.json")
        name = template_class(entry["template"])
        if name not in label_of:
            raise ValueError(f"{path}: entry {n} (id {entry['id']}): class '{name}' (from template "
                             f"'{entry['template']}') is not in labels.json")
        vid = str(entry["id"])
        items.append(Annotated(vid, label_of[name], f"{vid}.webm"))
    if not items:
        raise ValueError(f"{path}: no videos listed")
    return items


def prepare_ssv2(annotations, video_root, output_dir, overwrite: bool = False, absolute: bool = False) -> PrepareReport:
    """Write train.txt (train.json), val.txt (validation.json), classes.txt, missing.txt and report.txt.

    ``annotations``: the folder holding labels.json, train.json and validation.json."""
    class_names = read_ssv2_labels(need_file(annotations, "labels.json", "SSv2 labels"))
    lists = {"train.txt": read_ssv2_split(need_file(annotations, "train.json", "SSv2 train list"), class_names),
             "val.txt": read_ssv2_split(need_file(annotations, "validation.json", "SSv2 validation list"), class_names)}
    return write_prepared("ssv2", output_dir, class_names, lists, video_root, overwrite, absolute)
