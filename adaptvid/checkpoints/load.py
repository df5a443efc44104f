"""Rebuilding a saved model: from a checkpoint folder, or a Hugging Face Hub repository holding one."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..methods.registry import config_from_dict, get_method
from ..model import assemble_model
from .adapter import CONFIG_FILE, WEIGHTS_FILE, load_trainable, read_config, save_adapter
from .init_from import init_from


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


def load_model(directory, weights: Optional[str] = None, map_location: str = "cpu"):
    """Rebuild a saved model on a freshly loaded backbone and load its trained tensors.

    ``directory``: a checkpoint folder (``adaptvid.json`` + ``adapter.safetensors``) or a Hub
    repository id holding one. ``weights`` overrides the backbone weights recorded at save time
    (e.g. a local copy of the hub weights on an offline machine).
    """
    directory = resolve_checkpoint(directory)
    config = read_config(directory)
    if "backbone" not in config or "methods" not in config:
        missing = [key for key in ("backbone", "methods") if key not in config]
        raise ValueError(f"{directory / CONFIG_FILE}: missing {', '.join(map(repr, missing))}; the file was edited "
                         "or truncated: restore it from the run that wrote it")
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
    load_trainable(model, directory, map_location)
    model.class_names = config.get("class_names")
    model.checkpoint_config = config
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
