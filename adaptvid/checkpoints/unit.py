"""Training checkpoints saved as one unit: adapter, config and trainer state all old or all new.

A training run's folder holds ``adapter.safetensors``, ``adaptvid.json`` and ``trainer_state.pt``
plus ``checkpoint.json``, the manifest: the file names with their sizes and SHA-256, the epoch and
the step. :func:`write_unit` saves a new checkpoint so that a kill at any moment leaves one
consistent checkpoint, old or new:

1. the new files are written (and fsynced) into a fresh ``.checkpoint-tmp-*`` folder, the manifest
   last; a failure here (a full disk) removes that folder and touches nothing else;
2. the current files are hard-linked (copied where links are not supported) into
   ``.previous-checkpoint.tmp/``, which is then renamed ``.previous-checkpoint/`` — a complete copy of
   the last good checkpoint (an empty one for the very first save);
3. the top-level manifest is removed, the new files are renamed over the old ones one by one, and the
   new manifest is renamed into place last: that rename is the commit;
4. ``.previous-checkpoint/`` and the temporary folder are removed.

Reading (:func:`locate`): a top-level manifest means the last save committed, and its files must
match it; no top-level manifest but a ``.previous-checkpoint/`` means a save was interrupted between
steps 2 and 3, and the previous checkpoint is the good one; neither means a plain folder
(``model.save_adapter``, or a run saved by an adaptvid without manifests), read as it is.
:func:`recover` (run when training starts) removes what an interrupted save left behind and puts
the previous checkpoint back in place. Nothing here unpickles.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from .adapter import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE

logger = logging.getLogger("adaptvid")

STATE_FILE = "trainer_state.pt"
PREVIOUS_DIR = ".previous-checkpoint"
TEMP_PREFIX = ".checkpoint-tmp-"
UNIT_FILES = (WEIGHTS_FILE, CONFIG_FILE, STATE_FILE)
FORMAT = "adaptvid-checkpoint"
FORMAT_VERSION = 1

_replace = os.replace   # module-level names, so that tests can interrupt a save between two renames


class IncompleteCheckpointError(ValueError):
    """A checkpoint folder whose files are missing, truncated or do not match their manifest."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the last good checkpoint is kept."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:   # not supported (e.g. Windows): renames are still atomic, only less durable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_one(writer: Callable[[Path], None], path: Path) -> None:
    """Run one file's writer into the temporary folder and make the file durable."""
    writer(path)
    _fsync_file(path)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def read_manifest(directory) -> Optional[dict]:
    """The manifest of ``directory`` (None when it has none); an unreadable one is an error."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IncompleteCheckpointError(
            f"{path}: the checkpoint manifest is not valid JSON ({error}); the folder was damaged. Restore it from "
            f"a copy, or delete {MANIFEST_FILE} to read the other files as they are") from error
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise IncompleteCheckpointError(f"{path}: not an adaptvid checkpoint manifest")
    return manifest


def verify(directory, manifest: dict, names: Optional[Iterable[str]] = None) -> list[str]:
    """What does not match the manifest among ``names`` (default: every file it lists): missing files,
    other sizes, other SHA-256. Empty when everything matches."""
    directory = Path(directory)
    files = manifest["files"]
    problems = []
    for name in (names if names is not None else files):
        if name not in files:
            problems.append(f"{name} is not in {MANIFEST_FILE}")
            continue
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != files[name]["size"]:
            problems.append(f"{name} has {size:,} bytes, {files[name]['size']:,} were saved (truncated or replaced)")
        elif sha256_file(path) != files[name]["sha256"]:
            problems.append(f"{name} differs from the saved file (SHA-256 mismatch: corrupt or replaced)")
    return problems


@dataclass
class Located:
    """Where a folder's checkpoint is: ``current`` (top level, committed), ``previous`` (an interrupted
    save: the last good one in ``.previous-checkpoint/``; ``empty`` when that was the first save) or
    ``plain`` (no manifest: read the files as they are)."""
    path: Path
    where: str
    manifest: Optional[dict] = None
    empty: bool = False
    notes: list = field(default_factory=list)


def locate(directory, names: Iterable[str] = (WEIGHTS_FILE, CONFIG_FILE)) -> Located:
    """Find ``directory``'s consistent checkpoint, checking ``names`` against the manifest. Read-only.

    Raises :class:`IncompleteCheckpointError` when a committed checkpoint's files do not match its manifest.
    """
    directory = Path(directory)
    names = tuple(names)
    manifest = read_manifest(directory)
    if manifest is not None:
        problems = verify(directory, manifest, names)
        if problems:
            raise IncompleteCheckpointError(
                f"{directory}: the checkpoint does not match its manifest {MANIFEST_FILE} "
                f"(epoch {manifest.get('epoch')}, step {manifest.get('step')}): {'; '.join(problems)}. The files were "
                f"changed after the save or damaged: restore them from a copy, or delete {MANIFEST_FILE} to use the "
                "files as they are")
        return Located(directory, "current", manifest)
    previous = directory / PREVIOUS_DIR
    if previous.is_dir():
        kept = read_manifest(previous)
        present = [name for name in UNIT_FILES if (previous / name).is_file()]
        if kept is not None:
            problems = verify(previous, kept, [n for n in names if n in kept["files"]])
            if problems:
                raise IncompleteCheckpointError(
                    f"{directory}: a save was interrupted and the previous checkpoint kept in {previous} is damaged "
                    f"too: {'; '.join(problems)}")
        return Located(previous, "previous", kept, empty=not present,
                       notes=[f"{directory}: a save was interrupted; using the last complete checkpoint"
                              + (f" (epoch {kept.get('epoch')}, step {kept.get('step')})" if kept else "")
                              + f", kept in {previous.name}/"])
    return Located(directory, "plain")


def estimate_message(estimated: dict) -> str:
    total = sum(estimated.values())
    parts = ", ".join(f"{name} {size:,}" for name, size in estimated.items())
    return f"about {total:,} bytes ({parts})"


def _save_error(error: OSError, directory: Path, estimated: dict, free: Optional[int]) -> CheckpointSaveError:
    full = error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    what = "no space left on the device" if full else f"{type(error).__name__}: {error}"
    free_text = f"; {free:,} bytes were free before the save" if free is not None else ""
    return CheckpointSaveError(
        error.errno or errno.EIO,
        f"could not save the checkpoint into {directory}: {what}. The save needs {estimate_message(estimated)}"
        f"{free_text}. The last good checkpoint there (if any) is kept unchanged; free some space (or choose another "
        "--output) "
        "and resume with --resume")


def write_unit(directory, writers: dict, info: dict, estimated: dict) -> dict:
    """Save a checkpoint as one unit (see the module docstring). ``writers``: file name -> function writing
    that file at the path it is given; ``info``: manifest fields (``epoch``, ``step``...); ``estimated``:
    file name -> expected size in bytes (for the error when the disk is full). Returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    needed = sum(estimated.values())
    if free is not None and free < needed:
        raise _save_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), directory, estimated, free)
    temp = directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        temp.mkdir()
        files = {}
        for name, writer in writers.items():
            _write_one(writer, temp / name)
            files[name] = {"size": (temp / name).stat().st_size, "sha256": sha256_file(temp / name)}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **info, "files": files}
        text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
        _write_one(lambda path: path.write_text(text), temp / MANIFEST_FILE)
        _fsync_dir(temp)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        raise _save_error(error, directory, estimated, free) from error
    except Exception:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    # (KeyboardInterrupt and other BaseExceptions leave things as a kill would; the next start cleans up.)
    try:
        _keep_previous(directory)
        (directory / MANIFEST_FILE).unlink(missing_ok=True)
        for name in writers:
            _replace(temp / name, directory / name)
        _replace(temp / MANIFEST_FILE, directory / MANIFEST_FILE)   # the commit
        _fsync_dir(directory)
    except Exception as error:
        # Put the last good checkpoint back in place now (after a kill, the next start's recover() does it).
        shutil.rmtree(temp, ignore_errors=True)
        try:
            recover(directory)
        except Exception:   # pragma: no cover - the next start retries
            logger.exception("could not restore the previous checkpoint in %s yet", directory)
        if isinstance(error, OSError):
            raise _save_error(error, directory, estimated, free) from error
        raise
    _discard(directory / PREVIOUS_DIR)
    shutil.rmtree(temp, ignore_errors=True)
    return manifest


def _discard(folder: Path) -> None:
    """Remove a folder in one atomic step (a rename to a temporary name), then its files: a reader never sees a
    half-deleted ``.previous-checkpoint/``."""
    if not folder.is_dir():
        return
    doomed = folder.with_name(f"{TEMP_PREFIX}discarded-{secrets.token_hex(4)}")
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _keep_previous(directory: Path) -> None:
    """Make ``.previous-checkpoint/`` a complete copy of the current checkpoint (hard links), unless it already
    holds the good one (an earlier save was interrupted and not yet recovered)."""
    previous = directory / PREVIOUS_DIR
    if previous.is_dir():
        if not (directory / MANIFEST_FILE).is_file():
            return   # the top level is mid-swap: the previous folder is the last good checkpoint
        shutil.rmtree(previous)   # left over after a completed save
    staging = directory / (PREVIOUS_DIR + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in (*UNIT_FILES, MANIFEST_FILE):
        if (directory / name).is_file():
            _link_or_copy(directory / name, staging / name)
    _fsync_dir(staging)
    os.rename(staging, previous)
    _fsync_dir(directory)


def recover(directory, names: Iterable[str] = UNIT_FILES) -> list[str]:
    """Tidy ``directory`` after an interrupted save: remove temporary folders and ``*.tmp`` files, and put the
    previous checkpoint back in place if a save stopped mid-swap. Returns one line per action (for the log)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    actions = []
    for path in sorted(directory.iterdir()):
        if path.is_dir() and (path.name.startswith(TEMP_PREFIX) or path.name == PREVIOUS_DIR + ".tmp"):
            shutil.rmtree(path, ignore_errors=True)
            actions.append(f"removed {path.name}/, the partial files of an interrupted save")
        elif path.is_file() and path.name.endswith(".tmp"):
            path.unlink()
            actions.append(f"removed {path.name}, a partial file of an interrupted save")
    previous = directory / PREVIOUS_DIR
    if previous.is_dir():
        if (directory / MANIFEST_FILE).is_file():
            shutil.rmtree(previous, ignore_errors=True)
            actions.append(f"removed {PREVIOUS_DIR}/, the copy kept during a save that completed")
        else:
            kept = read_manifest(previous)
            restored = []
            for name in names:
                source = previous / name
                if source.is_file() and (directory / name).is_file() and os.path.samefile(source, directory / name):
                    restored.append(name)   # never replaced: still the hard link of the previous file
                elif source.is_file():
                    temporary = directory / (name + ".restore.tmp")
                    temporary.unlink(missing_ok=True)
                    _link_or_copy(source, temporary)
                    _replace(temporary, directory / name)
                    restored.append(name)
                else:
                    (directory / name).unlink(missing_ok=True)   # written by the interrupted first save
            if kept is not None:   # removed first by the save: never the same file as the previous one
                temporary = directory / (MANIFEST_FILE + ".restore.tmp")
                _link_or_copy(previous / MANIFEST_FILE, temporary)
                _replace(temporary, directory / MANIFEST_FILE)
            _fsync_dir(directory)
            _discard(previous)
            if restored:
                where = f" (epoch {kept.get('epoch')}, step {kept.get('step')})" if kept else ""
                actions.append(f"a save was interrupted: restored the previous checkpoint{where} "
                               f"({', '.join(restored)}) from {PREVIOUS_DIR}/")
            else:
                actions.append("the first save was interrupted: removed its partial files; no checkpoint yet")
    return actions


__all__ = ["CheckpointSaveError", "IncompleteCheckpointError", "Located", "MANIFEST_FILE", "PREVIOUS_DIR",
           "STATE_FILE", "TEMP_PREFIX", "UNIT_FILES", "locate", "read_manifest", "recover", "sha256_file", "verify",
           "write_unit"]
