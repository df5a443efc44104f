"""What every `prepare` converter shares: reading annotation text, finding the videos on disk, writing
the list files, classes.txt and missing.txt, and the report of what was written."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from ..lists import DEFAULT_EXTENSIONS, _read_lines

SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


@dataclass(frozen=True)
class Annotated:
    """One video of an annotation file: its stem (file name without extension, or frame-folder name),
    its label (index into the class names), where it is expected under the video root, and the
    folder name its class would have on disk (to choose between two videos with the same stem)."""

    stem: str
    label: int
    expected: str
    class_folder: str = ""


@dataclass
class PrepareReport:
    """What a `prepare` converter wrote: the files, the videos listed and missing per list."""

    dataset: str
    output_dir: str
    num_classes: int
    files: dict = field(default_factory=dict)     # role -> path
    listed: dict = field(default_factory=dict)    # list name -> videos written
    missing: dict = field(default_factory=dict)   # list name -> videos not found on disk
    notes: list = field(default_factory=list)

    @property
    def total_missing(self) -> int:
        return sum(self.missing.values())

    def summary(self) -> str:
        lines = [f"{self.dataset}: {self.num_classes} classes -> {self.output_dir}"]
        for name, count in self.listed.items():
            gone = self.missing.get(name, 0)
            lines.append(f"  {name}: {count} videos listed" + (f", {gone} missing on disk" if gone else ""))
        if self.total_missing:
            lines.append(f"  {self.total_missing} missing videos written to {self.files.get('missing')}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def annotation_lines(path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of every non-blank line: UTF-8, BOM and CRLF tolerated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: '{path}'")
    return [(n, line.strip()) for n, line in enumerate(_read_lines(path, what), start=1) if line.strip()]


def need_file(folder, name: str, what: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: '{path}' (the official file name is {name})")
    return path


class VideoIndex:
    """The videos under ``root`` by stem: files with a video extension, and frame folders (a folder whose
    name is a wanted stem, not descended into, so a tree of extracted frames is not listed file by file)."""

    def __init__(self, root, wanted: Iterable[str], extensions: Sequence[str] = DEFAULT_EXTENSIONS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video root not found: '{self.root}' (pass the folder holding the videos)")
        wanted = set(wanted)
        ext = tuple(e.lower() for e in extensions)
        self.by_stem: dict[str, list[str]] = {}
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(self.root / rel) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir():
                        if entry.name in wanted:
                            self.by_stem.setdefault(entry.name, []).append(child)
                        else:
                            stack.append(child)
                    else:
                        stem, suffix = os.path.splitext(entry.name)
                        if suffix.lower() in ext and stem in wanted:
                            self.by_stem.setdefault(stem, []).append(child)
        self.ambiguous = 0

    def find(self, item: Annotated) -> Optional[str]:
        """The relative path of ``item`` on disk, or None. With several candidates: the expected path,
        then one inside a folder named like the class, then the first in sorted order."""
        found = self.by_stem.get(item.stem)
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        if item.expected in found:
            return item.expected
        self.ambiguous += 1
        folder = _loose(item.class_folder)
        in_class = [p for p in sorted(found) if folder and _loose(os.path.basename(os.path.dirname(p))) == folder]
        return (in_class or sorted(found))[0]


def _loose(name: str) -> str:
    """A folder spelling of a class name, compared ignoring case and `_` / space differences."""
    return " ".join(name.replace("_", " ").lower().split())


def list_line(path: str, label: int) -> str:
    """One list line readable by :func:`adaptvid.data.read_list_file`: a comma separator when the path has
    whitespace or a comma (the label then follows the last comma), ``./`` before a path starting with '#'."""
    if path.startswith("#"):
        path = "./" + path
    return f"{path},{label}" if "," in path or any(c.isspace() for c in path) else f"{path} {label}"


def check_free(paths: Iterable[Path], overwrite: bool) -> None:
    if overwrite:
        return
    for path in paths:
        if path.exists():
            raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")


def write_text(path: Path, lines: Iterable[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def resolve_lists(lists: Mapping[str, Sequence[Annotated]], index: VideoIndex):
    """Per list: [(relative path under the root, label)] of the videos found, and [Annotated] of the missing."""
    found, missing = {}, {}
    for name, items in lists.items():
        found[name], missing[name] = [], []
        for item in items:
            rel = index.find(item)
            (found[name].append((rel, item.label)) if rel is not None else missing[name].append(item))
    return found, missing


def write_prepared(dataset: str, output_dir, class_names: Sequence[str], lists: Mapping[str, Sequence[Annotated]],
                   video_root, overwrite: bool = False, absolute: bool = False,
                   index: Optional[VideoIndex] = None, report: Optional[PrepareReport] = None,
                   classes_file: Optional[str] = "classes.txt") -> PrepareReport:
    """Find ``lists``' videos under ``video_root`` and write, into ``output_dir``: one list file per entry of
    ``lists`` (its key is the file's path relative to ``output_dir``, e.g. ``train.txt``, ``split2/val.txt``),
    ``classes.txt`` (``classes_file``; None: not written), ``missing.txt`` (``list<TAB>expected path<TAB>label`` of each video not on disk; those
    are left out of the lists) and ``report.txt``. List paths are relative to the list's own folder (the
    default root of :func:`read_list_file`), or absolute with ``absolute``. Nothing is written when a file
    exists and not ``overwrite``, or when no video at all is found."""
    out = Path(output_dir)
    index = index or VideoIndex(video_root, {i.stem for items in lists.values() for i in items})
    found, missing = resolve_lists(lists, index)
    total = sum(len(v) for v in found.values())
    if total == 0:
        example = next((i.expected for items in lists.values() for i in items), "?")
        raise ValueError(f"none of the {sum(len(v) for v in lists.values())} annotated videos was found under "
                         f"'{index.root}' (expected e.g. '{index.root / example}'); pass the folder that holds them")
    targets = [out / name for name in lists if found[name]] + [out / n for n in ("missing.txt", "report.txt")]
    targets += [out / classes_file] if classes_file else []
    check_free(targets, overwrite)
    report = report or PrepareReport(dataset, str(out), len(class_names))
    if classes_file:
        report.files["classes"] = str(write_text(out / classes_file, class_names))
    root = Path(video_root).resolve()
    for name in lists:
        if not found[name]:
            report.notes.append(f"{name}: every video is missing, not written")
            report.listed[name], report.missing[name] = 0, len(missing[name])
            continue
        target = out / name
        base = target.parent.resolve() if not absolute else None
        lines = [list_line(str(root / rel) if absolute else os.path.relpath(root / rel, base), label)
                 for rel, label in found[name]]
        report.files[name] = str(write_text(target, lines))
        report.listed[name], report.missing[name] = len(lines), len(missing[name])
    report.files["missing"] = str(write_text(out / "missing.txt", [
        "# videos in the annotations but not found under " + str(root) + ": list, expected path, label"] + [
        f"{name}\t{item.expected}\t{item.label}" for name, items in missing.items() for item in items]))
    if index.ambiguous:
        report.notes.append(f"{index.ambiguous} videos exist more than once under the root (same name); "
                            "the one in the expected place or class folder was listed")
    report.files["report"] = str(write_text(out / "report.txt", [report.summary()]))
    return report
