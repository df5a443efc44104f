"""Evaluation protocols shared by the text-side recipes: few-shot splits, base-to-novel, cross-dataset zero-shot.

* **Few-shot** (X-CLIP / ViFi-CLIP protocol, K = 2, 4, 8, 16): :func:`few_shot` keeps exactly K
  videos of every class, drawn with a seeded generator, so one seed always gives the same split.
* **Base-to-novel** (introduced by ViFi-CLIP, Rasheed et al., CVPR 2023): the classes are split into
  a base half (trained on, usually K=16 shots per class, three seeds) and a novel half (never seen);
  a model is evaluated on both and reported with their harmonic mean (:func:`base_to_novel_report`).
  :func:`split_classes` orders the classes by index (the first half is base), by training
  frequency (most frequent half is base) or by a seeded shuffle. ViFi-CLIP ships its own fixed
  split files; use those lists for numbers comparable with the paper.
* **Cross-dataset zero-shot**: train on Kinetics-400, then score another dataset's class names
  (``adaptvid.set_classes``, ``adaptvid eval --zero-shot --classes FILE``); UCF-101 and HMDB-51 are
  reported as mean and standard deviation over their three official splits (:func:`mean_std`).

List files are read and written line by line: a written list's relative paths are rewritten to
resolve from its own folder (so it works wherever it was written), and labels are renumbered only
where a class subset is taken.
"""
from __future__ import annotations

import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

from .lists import _parse_label, _split_line, read_class_names, read_list_file

SHOTS = (2, 4, 8, 16)
ORDERS = ("index", "frequency", "random")


@dataclass(frozen=True)
class ListEntry:
    """One line of a list file: the path exactly as written, and its label."""

    path: str
    label: int


def read_list_entries(path) -> list[ListEntry]:
    """The entries of a ``path label`` list file (same format and errors as :func:`read_list_file`)."""
    read_list_file(path)  # validates the whole file, naming file:line on a malformed line
    entries = []
    with open(path, encoding="utf-8-sig") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = _split_line(line)
            label = _parse_label(fields[1]) if fields else None
            if label is not None:  # the header line, if any, has no integer label
                entries.append(ListEntry(fields[0], label))
    return entries


def rebase(entry: ListEntry, source, target) -> ListEntry:
    """``entry`` of the list file ``source`` with its relative path rewritten to resolve from the folder of
    the list file ``target`` (a list's paths are relative to its own folder by default)."""
    if os.path.isabs(entry.path):
        return entry
    absolute = os.path.normpath(os.path.join(os.path.abspath(os.path.dirname(source)), entry.path))
    return ListEntry(os.path.relpath(absolute, os.path.abspath(os.path.dirname(target))), entry.label)


def write_list(entries: Iterable[ListEntry], path, source=None) -> Path:
    """Write ``path label`` lines (a comma separator when a path holds whitespace). With ``source`` (the
    list the entries came from), relative paths are rewritten to resolve from ``path``'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        entries = [rebase(e, source, path) for e in entries]
    lines = [f"{e.path},{e.label}" if any(c.isspace() for c in e.path) else f"{e.path} {e.label}" for e in entries]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _class_label(label: int, class_names: Optional[Sequence[str]]) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return f"{label} ({class_names[label]!r})"
    return str(label)


def few_shot(entries: Sequence[ListEntry], shots: int, seed: int = 0, allow_fewer: bool = False,
             class_names: Optional[Sequence[str]] = None) -> list[ListEntry]:
    """Exactly ``shots`` entries of every class, chosen by a generator seeded with ``seed``.

    Classes are visited in label order and each draws from its entries in list order, so the result
    depends only on the list and the seed. A class with fewer than ``shots`` entries is an error
    naming it, unless ``allow_fewer`` (then all of its entries are kept). With ``class_names``, a
    class that has no entry at all is an error too. The kept entries come out in list order.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1 (the protocol uses {SHOTS}), got {shots}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, entry in enumerate(entries):
        by_class[entry.label].append(index)
    if class_names is not None:
        absent = [label for label in range(len(class_names)) if label not in by_class]
        if absent and not allow_fewer:
            raise ValueError(f"class {_class_label(absent[0], class_names)} has no video in the list "
                             f"({len(absent)} such classes); pass allow_fewer / --allow-fewer to skip them")
    short = [(label, len(idx)) for label, idx in sorted(by_class.items()) if len(idx) < shots]
    if short and not allow_fewer:
        label, count = short[0]
        raise ValueError(f"class {_class_label(label, class_names)} has only {count} video(s), fewer than "
                         f"{shots} shots ({len(short)} such classes); pass allow_fewer / --allow-fewer to keep "
                         "all videos of those classes")
    rng = random.Random(seed)
    kept = []
    for label in sorted(by_class):
        indices = by_class[label]
        kept.extend(indices if len(indices) <= shots else rng.sample(indices, shots))
    return [entries[i] for i in sorted(kept)]


def split_classes(num_classes: int, order: str = "index", seed: int = 0,
                  counts: Optional[Mapping[int, int]] = None) -> tuple[list[int], list[int]]:
    """(base, novel) class indices, each sorted; the base half has ``ceil(C / 2)`` classes.

    ``order``: ``"index"`` (base = the first half by class index), ``"frequency"`` (base = the classes
    with the most training videos, ``counts`` by label, ties broken by index) or ``"random"`` (a shuffle
    seeded with ``seed``).
    """
    if num_classes < 2:
        raise ValueError(f"base-to-novel needs at least 2 classes, got {num_classes}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    ranked = list(range(num_classes))
    if order == "frequency":
        if counts is None:
            raise ValueError("order='frequency' needs the training videos per class (pass the training list)")
        ranked.sort(key=lambda label: (-counts.get(label, 0), label))
    elif order == "random":
        random.Random(seed).shuffle(ranked)
    cut = math.ceil(num_classes / 2)
    return sorted(ranked[:cut]), sorted(ranked[cut:])


def subset(entries: Iterable[ListEntry], classes: Sequence[int]) -> list[ListEntry]:
    """The entries of ``classes`` only, labels renumbered to positions in ``classes``."""
    new_label = {old: new for new, old in enumerate(classes)}
    return [ListEntry(e.path, new_label[e.label]) for e in entries if e.label in new_label]


def base_novel_split(classes_file, output_dir, lists: Sequence = (), order: str = "index", seed: int = 0,
                     shots: Optional[int] = None, allow_fewer: bool = False) -> dict[str, str]:
    """Write the base-to-novel files into ``output_dir``; returns {role: path}.

    ``base_classes.txt`` / ``novel_classes.txt`` (names in their new label order), and for each list
    file ``base_<name>.txt`` / ``novel_<name>.txt`` with labels renumbered within the half. The first
    list is the training list: it gives the class frequencies (``order="frequency"``) and, with
    ``shots``, a K-shot base training list ``base_<name>_<K>shot_seed<S>.txt``.
    """
    names = read_class_names(classes_file)
    loaded = [(Path(p), read_list_entries(p)) for p in lists]
    for path, entries in loaded:
        bad = [e for e in entries if e.label >= len(names)]
        if bad:
            raise ValueError(f"{path}: label {bad[0].label} of {bad[0].path} is out of range for the "
                             f"{len(names)} classes in {classes_file}")
    counts = Counter(e.label for e in loaded[0][1]) if loaded else None
    base, novel = split_classes(len(names), order, seed, counts)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for half, indices in (("base", base), ("novel", novel)):
        target = out / f"{half}_classes.txt"
        target.write_text("".join(names[i] + "\n" for i in indices), encoding="utf-8")
        written[f"{half}_classes"] = str(target)
        for path, entries in loaded:
            written[f"{half}_{path.stem}"] = str(write_list(subset(entries, indices), out / f"{half}_{path.stem}.txt", source=path))
    if shots is not None:
        if not loaded:
            raise ValueError("shots needs a training list (--list train.txt ...)")
        path, entries = loaded[0]
        base_names = [names[i] for i in base]
        chosen = few_shot(subset(entries, base), shots, seed, allow_fewer, base_names)
        written["base_train_few_shot"] = str(write_list(chosen, out / f"base_{path.stem}_{shots}shot_seed{seed}.txt", source=path))
    return written


# -- reporting ----------------------------------------------------------------------------------

Number = Union[float, int, Mapping]


def _top1(value: Number) -> float:
    """A number, or an evaluation result (``adaptvid eval --json``: its ``top1``)."""
    return float(value["top1"]) if isinstance(value, Mapping) else float(value)


def harmonic_mean(base: float, novel: float) -> float:
    """``2 * base * novel / (base + novel)`` (0 when both are 0)."""
    base, novel = float(base), float(novel)
    if base < 0 or novel < 0:
        raise ValueError(f"accuracies must be >= 0, got base={base}, novel={novel}")
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def base_to_novel_report(base: Union[Number, Sequence[Number]], novel: Union[Number, Sequence[Number]]) -> dict:
    """Base, novel and harmonic-mean accuracy.

    Each of ``base`` / ``novel`` is an accuracy, an eval result dict, or one per seed (the protocol
    uses three): the seeds are averaged first and the harmonic mean is taken of the two averages
    (as the ViFi-CLIP tables report it); the per-seed values are kept under ``"seeds"``.
    """
    bases = [_top1(v) for v in (base if isinstance(base, (list, tuple)) else [base])]
    novels = [_top1(v) for v in (novel if isinstance(novel, (list, tuple)) else [novel])]
    if len(bases) != len(novels):
        raise ValueError(f"{len(bases)} base result(s) but {len(novels)} novel result(s): give one of each per seed")
    b, n = sum(bases) / len(bases), sum(novels) / len(novels)
    report = {"base": b, "novel": n, "hm": harmonic_mean(b, n)}
    if len(bases) > 1:
        report["seeds"] = [{"base": x, "novel": y, "hm": harmonic_mean(x, y)} for x, y in zip(bases, novels)]
    return report


def mean_std(values: Sequence[Number]) -> tuple[float, float]:
    """Mean and (population) standard deviation, e.g. over the three UCF-101 / HMDB-51 splits."""
    numbers = [_top1(v) for v in values]
    if not numbers:
        raise ValueError("mean_std needs at least one value")
    mean = sum(numbers) / len(numbers)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in numbers) / len(numbers))
