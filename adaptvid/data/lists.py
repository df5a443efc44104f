"""Finding videos and labels: list files, class-name files, class folders."""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")

logger = logging.getLogger("adaptvid.data")

# Column names a header line may use (compared case-insensitively, quotes
# stripped).  Only a first line whose path field AND label field are both
# among these is taken as a header; anything else must be a sample.
_PATH_HEADERS = frozenset({"path", "paths", "video", "videos", "video_path", "videopath",
                           "filename", "file_name", "file", "filepath", "file_path", "name",
                           "clip", "clip_path", "youtube_id", "video_id"})
_LABEL_HEADERS = frozenset({"label", "labels", "label_id", "class", "class_id", "classid",
                            "class_index", "target", "category", "category_id"})


@dataclass
class VideoSample:
    """One video file and its integer class label."""

    path: str
    label: int


def _parse_label(text: str) -> int | None:
    """The label as an int >= 0, or None if `text` is not one ("3.0", "-1", "cat")."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


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


def _is_header(fields: tuple[str, str] | None) -> bool:
    """True for a literal column header such as ``path,label`` or ``Video Class``."""
    if fields is None:
        return False
    path_field, label_field = (f.strip().strip("\"'").strip().lower() for f in fields)
    return path_field in _PATH_HEADERS and label_field in _LABEL_HEADERS


def _read_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, a leading byte-order mark removed.

    Windows tools often save UTF-8 with a BOM; read as plain UTF-8 it would
    stick to the first path or class name.  Text that is not UTF-8 raises a
    ValueError naming the file and line instead of a UnicodeDecodeError.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ValueError(f"{path}: the {what} is UTF-16 text (a UTF-16 byte-order mark "
                             f"starts it); save it as UTF-8") from None
        # The decoded text before the first bad byte gives its line number.
        body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
        try:
            body.decode("utf-8")
            offset = exc.start  # not reached: body fails as the whole file did
        except UnicodeDecodeError as plain:
            offset = plain.start
        before = body[:offset].decode("utf-8")
        lineno = io.StringIO(before, newline=None).read().count("\n") + 1
        raise ValueError(f"{path}:{lineno}: the {what} is not valid UTF-8 (byte "
                         f"0x{body[offset]:02x} cannot be decoded); save it as UTF-8, e.g. "
                         f"with your editor's 'UTF-8' encoding option or "
                         f"`iconv -f <its encoding> -t utf-8`") from None
    # Universal newlines (\n, \r\n, \r), the same lines open() would give.
    return io.StringIO(text, newline=None).read().split("\n")


def _outside_root(relative: str) -> bool:
    """True if the relative `relative` climbs above its root once normalised
    (``../x.mp4``, ``a/../../x.mp4``).  Lexical on purpose: a data root whose
    sub-folders are symlinks to other disks is normal and stays allowed."""
    normal = os.path.normpath(relative)
    return normal == os.pardir or normal.startswith(os.pardir + os.sep)


def check_list_labels(samples, num_classes: int, list_path, classes_from=None) -> None:
    """Refuse the two silent misreads of official split files as adaptvid lists, warn on a suspicious one.

    * labels that never use 0 but reach ``num_classes`` are 1-based (UCF101's ``trainlist01.txt``);
    * labels within {0, 1, 2} (1 and 2 present) against a class file of 20 or more classes, in a list with
      at least as many videos as classes, are HMDB51 split flags (``*_test_split1.txt``: 1 train, 2 test).

    Both raise a ValueError naming the list and the fix (``adaptvid prepare ucf101`` / ``hmdb51``). A list
    of twice as many videos as classes whose labels cover under 20 % of the classes logs a warning with
    the counts. Legitimate lists (demo, few-shot, base/novel halves) never meet the two refusals: their
    labels are below ``num_classes`` and they use class 0 or many classes.
    """
    labels = {s.label for s in samples}
    if not labels or num_classes < 1:
        return
    source = f" (classes: {classes_from})" if classes_from else ""
    if min(labels) >= 1 and max(labels) == num_classes:
        raise ValueError(
            f"{list_path}: labels run 1..{num_classes} and never use 0, for {num_classes} classes{source}: "
            f"this list is 1-based (as UCF101's trainlist01.txt is); adaptvid labels are 0-based. Convert "
            f"the official files with `adaptvid prepare ucf101`, or subtract 1 from every label")
    if labels <= {0, 1, 2} and {1, 2} <= labels and num_classes >= 20 and len(samples) >= num_classes:
        raise ValueError(
            f"{list_path}: every label is {sorted(labels)} but there are {num_classes} classes{source}: this "
            f"looks like an HMDB51 split file, whose numbers are split flags (1 train, 2 test, 0 unused), "
            f"not classes. Convert the official files with `adaptvid prepare hmdb51`")
    if len(labels) < 0.2 * num_classes and len(samples) >= 2 * num_classes:
        logger.warning("%s: its %d videos use only %d of the %d classes%s; check that the list and the "
                       "class file belong together", list_path, len(samples), len(labels), num_classes, source)


def read_list_file(path, data_root=None, allow_outside_root: bool = False, num_classes: int | None = None,
                   classes_from=None) -> list[VideoSample]:
    """Read a Kinetics/mmaction-style list: one ``relative/path label`` per line.

    Fields are separated by whitespace or by a comma (then paths may contain
    spaces).  The file is UTF-8 (a byte-order mark is ignored).  Blank lines
    and ``#`` comments are skipped, as is a column header on the first content
    line: both fields must be column names (``path,label``, ``video class``,
    ``filename,target``, ...).  Relative paths are joined onto `data_root`, by
    default the list file's own folder.  Paths may not climb out of an explicit
    `data_root` (``../``) unless `allow_outside_root` is true; relative to the list's own
    folder they may (lists written into a sub-folder, e.g. by ``adaptvid split``, refer to
    ``../videos``); absolute paths are kept as written.
    Raises ValueError naming ``file:line`` for a malformed line (including a
    label that is not an integer), a path outside the root, and for a list
    with no samples.  A path listed more than once is kept every time, with
    one warning on the ``adaptvid.data`` logger. With ``num_classes`` (the class file's length, named
    by ``classes_from`` in messages), the labels are checked by :func:`check_list_labels`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: '{path}'")
    root = Path(data_root) if data_root is not None else path.parent
    samples: list[VideoSample] = []
    first_seen: dict[str, tuple[int, int]] = {}  # normalised path -> (line, label)
    duplicates: list[tuple[int, str, int]] = []  # (line, path as written, line first seen)
    relabelled = 0
    first_content = True
    for lineno, raw in enumerate(_read_lines(path, "list file"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = _split_line(line)
        label = _parse_label(fields[1]) if fields else None
        if label is None:
            if first_content and _is_header(fields):
                first_content = False
                continue
            if first_content and fields and any(c.isalpha() for c in fields[1]):
                # Used to be dropped silently as a "header", losing a sample.
                raise ValueError(
                    f"{path}:{lineno}: label '{fields[1]}' is not an integer; labels are "
                    f"class indices (integers >= 0) and class names go in a separate file, "
                    f"one per line in label order, passed with --classes; got '{line}' "
                    f"(a header line must name both columns, e.g. 'path,label')")
            raise ValueError(f"{path}:{lineno}: expected 'relative/path label' "
                             f"(label an integer >= 0), got '{line}'")
        first_content = False
        relative = fields[0]
        if (data_root is not None and not allow_outside_root and not os.path.isabs(relative)
                and _outside_root(relative)):
            raise ValueError(
                f"{path}:{lineno}: '{relative}' points outside the data root '{root}'; "
                f"list paths relative to the data root (--data-root, by default the "
                f"list file's folder), or, if this is intended, pass "
                f"allow_outside_root=True (CLI: --allow-outside-root)")
        joined = os.path.join(root, relative)
        key = os.path.normpath(joined)
        if key in first_seen:
            first_line, first_label = first_seen[key]
            duplicates.append((lineno, relative, first_line))
            relabelled += first_label != label
        else:
            first_seen[key] = (lineno, label)
        samples.append(VideoSample(joined, label))
    if not samples:
        raise ValueError(f"{path}: no samples found; expected lines like "
                         f"'relative/path label'")
    if duplicates:
        lineno, relative, first_line = duplicates[0]
        conflict = (f"; {relabelled} of them with a different label than the first listing"
                    if relabelled else "")
        logger.warning("%s: %d duplicate %s (a video listed more than once), first at %s:%d: "
                       "'%s' (already on line %d)%s; all are kept, so those videos count "
                       "more than once", path, len(duplicates),
                       "entry" if len(duplicates) == 1 else "entries", path, lineno, relative,
                       first_line, conflict)
    if num_classes is not None:
        check_list_labels(samples, num_classes, path, classes_from)
    return samples


def read_class_names(path) -> list[str]:
    """Class names, one per line (blank lines ignored); line i is label i.

    UTF-8, a byte-order mark ignored; other encodings raise a ValueError
    naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file not found: '{path}'")
    names = [line.strip() for line in _read_lines(path, "class-name file") if line.strip()]
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
