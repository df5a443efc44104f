"""Finding videos and labels: list files, class-name files, class folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


@dataclass
class VideoSample:
    """One video file and its integer class label."""

    path: str
    label: int


def _parse_label(text: str) -> int | None:
    """The label as an int >= 0, or None if `text` is not one ("3.0", "-1", "cat")."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _is_word(text: str) -> bool:
    return text.replace("_", "").replace(" ", "").isalpha()


def _split_line(line: str) -> tuple[str, str] | None:
    """Split a list line into (path, label text); None if it has the wrong shape.

    With a comma, the label follows the last comma and the path may contain
    spaces.  Without one, the line must be exactly two whitespace-separated
    fields: a three-field line (e.g. mmaction's "path num_frames label") is
    rejected instead of being silently misread.
    """
    if "," in line:
        path, label = line.rsplit(",", 1)
        path = path.strip()
        return (path, label.strip()) if path else None
    fields = line.split()
    return (fields[0], fields[1]) if len(fields) == 2 else None


def read_list_file(path, data_root=None) -> list[VideoSample]:
    """Read a Kinetics/mmaction-style list: one ``relative/path label`` per line.

    Fields are separated by whitespace or by a comma (then paths may contain
    spaces).  Blank lines and ``#`` comments are skipped, as is a header such
    as ``path,label`` on the first content line.  Relative paths are joined
    onto `data_root`, by default the list file's own folder; absolute paths
    are kept.  Raises ValueError naming ``file:line`` for a malformed line,
    and for a list with no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: '{path}'")
    root = Path(data_root) if data_root is not None else path.parent
    samples: list[VideoSample] = []
    first_content = True
    with open(path, encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = _split_line(line)
            label = _parse_label(fields[1]) if fields else None
            if label is None:
                # A header names its columns with words ("path,label"); a label
                # like "3.0" or "-1" on the first line is an error, not a header.
                if first_content and fields and _is_word(fields[1]):
                    first_content = False
                    continue
                raise ValueError(f"{path}:{lineno}: expected 'relative/path label' "
                                 f"(label an integer >= 0), got '{line}'")
            first_content = False
            samples.append(VideoSample(os.path.join(root, fields[0]), label))
    if not samples:
        raise ValueError(f"{path}: no samples found; expected lines like "
                         f"'relative/path label'")
    return samples


def read_class_names(path) -> list[str]:
    """Class names, one per line (blank lines ignored); line i is label i."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file not found: '{path}'")
    with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names found; expected one name per line")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicated class names {duplicates}; each label "
                         f"needs a distinct name")
    return names


def folder_dataset(root, extensions=DEFAULT_EXTENSIONS) -> tuple[list[VideoSample], list[str]]:
    """Samples from a ``root/<class name>/<video>`` tree.

    Classes are the sub-folders sorted by name (label = position); videos are
    found recursively inside each class folder, matched by extension case-
    insensitively, and sorted, so the result does not depend on the file system.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: '{root}'")
    wanted = tuple(ext.lower() for ext in extensions)
    class_names = sorted(entry.name for entry in root.iterdir()
                         if entry.is_dir() and not entry.name.startswith("."))
    samples = []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in wanted)
        samples.extend(VideoSample(str(p), label) for p in files)
    if not samples:
        raise ValueError(f"no videos with extensions {list(wanted)} found under "
                         f"'{root}/<class>/'")
    return samples, class_names
