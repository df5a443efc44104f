"""What a failed backbone load says: a one-line summary, the advice that fits (hub or local file), and
the library's own error whole."""
from __future__ import annotations

import os
from typing import Optional

from .hub import _hub_advice


class BackboneLoadError(RuntimeError):
    """A backbone or its weights could not be loaded; the message says what to do."""


def _cause(error: BaseException) -> str:
    """The library's own error, whole (every line), below adaptvid's summary."""
    text = str(error).strip()
    if not text:
        return f"\ncaused by {type(error).__name__} (no message)"
    return f"\ncaused by {type(error).__name__}:\n" + "\n".join("  " + line for line in text.splitlines())


def _fail(name: str, tried: str, error: Exception, hub: bool = True) -> BackboneLoadError:
    """A load from the hub (``hub``: the hub was tried) or elsewhere failed: summary, advice, the inner error whole."""
    message = f"backbone {name!r}: could not load {tried}."
    if hub:
        message += "\n" + _hub_advice()
    return BackboneLoadError(message + _cause(error))


def _check_local(name: str, weights: str) -> None:
    if not os.path.exists(weights):
        raise BackboneLoadError(
            f"backbone {name!r}: weights file or folder {weights!r} does not exist; "
            "pass an existing local path, 'random', or nothing for the hub default"
        )


def _state_dict_mismatch(error: BaseException) -> bool:
    text = str(error)
    return "Error(s) in loading state_dict" in text or "size mismatch" in text


def _unreadable(name: str, path: str, library: str, expected: str,
                error: Optional[BaseException] = None) -> BackboneLoadError:
    """A local --weights PATH the library could not use (no hub was involved)."""
    kind = "folder" if os.path.isdir(path) else "file"
    if error is not None and _state_dict_mismatch(error):
        message = (f"the {kind} {path!r} is a checkpoint, but its weights do not fit backbone {name!r} "
                   f"({library} expected {expected}; was it saved from another model?)")
    else:
        message = (f"the {kind} {path!r} is not a readable checkpoint for backbone {name!r}: "
                   f"{library} expected {expected}")
    return BackboneLoadError(message + ("." if error is None else "." + _cause(error)))
