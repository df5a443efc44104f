"""Rebuilding a saved model: from a checkpoint folder, or a Hugging Face Hub repository holding one."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from ..methods.registry import config_from_dict, get_method
from ..model import assemble_model
from .adapter import CONFIG_FILE, WEIGHTS_FILE, load_trainable, read_config, save_adapter, saved_tensors
from .fingerprint import check_fingerprint
from .init_from import init_from
from .unit import locate

logger = logging.getLogger("adaptvid")


def resolve_checkpoint(directory_or_hub_id) -> Path:
    """A local checkpoint folder as it is; otherwise an ``owner/name`` Hub repository id, downloaded
    (its two checkpoint files only) through huggingface_hub's cache. Offline, a clear error."""
    path = Path(directory_or_hub_id).expanduser()
    text = str(directory_or_hub_id)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        return path   # read_config names the folder if it holds no checkpoint
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:  # pragma: no cover - a dependency of transformers
        raise FileNotFoundError(f"{text}: no such folder, and huggingface_hub is not installed to download "
                                "it as a Hub repository") from error
    try:
        return Path(snapshot_download(text, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))
    except Exception as error:
        raise FileNotFoundError(
            f"{text}: no such folder, and downloading it as a Hugging Face Hub repository failed "
            f"({type(error).__name__}: {error}); on an offline machine pass the local checkpoint folder") from error


def load_model(directory, weights: Optional[str] = None, map_location: str = "cpu", *,
               allow_other_weights: bool = False):
    """Rebuild a saved model on a freshly loaded backbone and load its trained tensors.

    ``directory``: a checkpoint folder (``adaptvid.json`` + ``adapter.safetensors``) or a Hub
    repository id holding one. ``weights`` overrides the backbone weights recorded at save time
    (e.g. a local copy of the hub weights on an offline machine).

    The rebuilt frozen tensors must be the ones the checkpoint was trained on: its recorded
    ``frozen_fingerprint`` is compared, and a mismatch (other weights, e.g. ``weights="random"``)
    raises :class:`~adaptvid.checkpoints.fingerprint.FingerprintMismatchError` unless
    ``allow_other_weights=True`` (then it warns). A training run's folder is checked against its
    manifest; if a save was interrupted, the last complete checkpoint is loaded (with a warning).
    """
    requested = directory
    located = locate(resolve_checkpoint(directory))
    directory = located.path
    if located.where == "previous":
        if located.empty:
            raise FileNotFoundError(f"{requested}: holds no complete checkpoint: the first save of its training run "
                                    "was interrupted; resume the run (--resume) or train it again")
        for note in located.notes:
            logger.warning(note)
    config = read_config(directory)
    if "backbone" not in config or "methods" not in config:
        missing = [key for key in ("backbone", "methods") if key not in config]
        raise ValueError(f"{directory / CONFIG_FILE}: missing {', '.join(map(repr, missing))}; the file was edited "
                         "or truncated: restore it from the run that wrote it")
    model = rebuild_model(config, weights)
    check_fingerprint(config.get("frozen_fingerprint"), model, saved_tensors(model), where=str(requested),
                      trained_weights=config.get("weights"), now_weights=model.weights,
                      allow_other_weights=allow_other_weights, init_from=config.get("init_from"))
    load_trainable(model, directory, map_location)
    model.class_names = config.get("class_names")
    model.checkpoint_config = config
    return model


def rebuild_model(config: dict, weights: Optional[str] = None):
    """The model a checkpoint config describes, before its trained tensors are loaded: built on the
    recorded weights (or ``weights``), merged methods folded in again, ``init_from`` repeated."""
    specs = [get_method(m["name"]) for m in config["methods"]]
    configs = [(spec, config_from_dict(spec, m["config"])) for spec, m in zip(specs, config["methods"])]
    model = assemble_model(
        config["backbone"], configs, config["num_classes"], class_names=config.get("class_names"),
        weights=weights if weights is not None else config.get("weights"),
        num_frames=config["num_frames"], pool=config["pool"], project=config.get("project", True),
        head_dropout=config.get("head_dropout", 0.0),
    )
    if config.get("merged"):  # rebuild the merged structure; the saved tower then brings the merged weights
        for name, method_config in model.methods:
            if name in config["merged"]:
                get_method(name).merge(model, method_config)
        model.merged_methods = list(config["merged"])
    if config.get("init_from"):  # the frozen towers came from another checkpoint (bridge and prompt): again
        init_from(model, config["init_from"])
    return model


def push_to_hub(model, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                commit_message: str = "Upload adaptvid checkpoint") -> str:
    """Save ``model``'s checkpoint and upload it to the Hub repository ``repo_id`` (created if needed);
    returns the commit URL. Needs huggingface_hub logged in (``huggingface-cli login``) or ``token``."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    extra = (getattr(model, "checkpoint_config", None) or {}).get("extra")
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp, class_names=model.class_names, extra=extra)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))


__all__ = ["load_model", "push_to_hub", "resolve_checkpoint"]
