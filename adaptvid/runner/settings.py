"""Run settings: a recipe, then keyword settings (or CLI flags), then dotted overrides, as one dict.

The settings dict has the recipe files' shape (``recipes/<method>/<name>.yaml``)::

    backbone: clip            method: st-adapter       weights: null | random | PATH
    options: {bottleneck: 384, ...}                    # method options
    model:   {frames: 8, head_dropout: 0.5, init_from: DIR}
    data:    {train: LIST, val: LIST, root: DIR, classes: FILE, sampling: dense, stride: 16, ...}
    train:   {epochs: 12, lr: 7.5e-4, ...}             # TrainConfig fields
    output:  runs/NAME

``resolve_settings`` builds it; flat keyword names (``epochs=3``, ``val="val.txt"``,
``bottleneck=64``) map onto their dotted paths exactly as the CLI's flags do, and dotted overrides
(``{"train.epochs": 1}`` or ``["train.epochs=1"]`` as ``--set`` takes them) come last.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..data.sampling import parse_views
from ..methods.registry import get_method, list_methods, split_method_names
from ..train.config import TrainConfig
from .recipes import RecipeError, apply_overrides, load_recipe, parse_value

# Flat setting names -> dotted paths (the CLI's flags use the same names, `--data-root` -> data_root).
FLAT_SETTINGS = {
    "backbone": "backbone", "method": "method", "weights": "weights", "output": "output",
    "frames": "model.frames", "head_dropout": "model.head_dropout", "init_from": "model.init_from",
    "train_list": "data.train", "val_list": "data.val", "val": "data.val", "data_root": "data.root",
    "classes": "data.classes", "sampling": "data.sampling", "stride": "data.stride", "hflip": "data.hflip",
    "backend": "data.backend", "allow_outside_root": "data.allow_outside_root",
    "task": "task", "captions_format": "data.captions_format",
    # every TrainConfig field by its own name: epochs, lr, seed, save_every_steps, ...
    **{f.name: f"train.{f.name}" for f in dataclasses.fields(TrainConfig)},
}
TASKS = ("classification", "retrieval")
RECIPE_ONLY = ("paper", "command", "description", "expected")   # documentation, not settings
DEFAULT_SETTINGS = {"backbone": "clip", "method": "frozen"}


class SettingsError(RecipeError):
    """A setting that is unknown or of the wrong type; the message names it and the fix."""


class NoUsefulWorkError(RuntimeError):
    """A run that did nothing useful (no readable video, no optimiser step); the CLI exits 1."""


def set_path(settings: dict, path: str, value: Any) -> None:
    node = settings
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def method_option_fields() -> dict[str, dataclasses.Field]:
    """Every registered method's config fields by name (the first method's field where names repeat)."""
    fields: dict[str, dataclasses.Field] = {}
    for spec in list_methods().values():
        for f in dataclasses.fields(spec.config_cls):
            fields.setdefault(f.name, f)
    return fields


def resolve_settings(recipe: Optional[str] = None, overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
                     **settings: Any) -> dict:
    """The settings of one run: ``recipe`` (a name or .yaml path), then ``settings``, then ``overrides``.

    ``settings`` take the recipe's section names (``options={...}``, ``data={...}``, ``train={...}``
    merge into those sections) or flat names (``epochs=3``, ``bottleneck=64``); ``train`` given as a
    path (not a dict) is the training list, as the issue-tracker examples and ``--train`` read it.
    """
    base = load_recipe(recipe) if recipe else dict(DEFAULT_SETTINGS)
    resolved = {k: copy.deepcopy(v) for k, v in base.items() if k not in RECIPE_ONLY}
    method = settings.get("method")
    if method and recipe and method != resolved.get("method"):
        resolved["options"] = _options_for(method, resolved.get("options", {}), recipe)
    option_names = method_option_fields()
    for key, value in settings.items():
        if value is None:
            continue
        if key == "train" and not isinstance(value, Mapping):
            key = "train_list"
        if key in ("options", "model", "data", "train"):
            if not isinstance(value, Mapping):
                raise SettingsError(f"setting {key!r} must be a mapping of {key} settings, got {value!r}")
            resolved.setdefault(key, {}).update(value)
        elif key in FLAT_SETTINGS:
            set_path(resolved, FLAT_SETTINGS[key], str(value) if isinstance(value, Path) else value)
        elif key in option_names:
            set_path(resolved, "options." + key, value)
        else:
            raise SettingsError(f"unknown setting {key!r}; use a recipe section (options, model, data, train), "
                                f"one of {', '.join(sorted(FLAT_SETTINGS))}, or a method option (adaptvid list)")
    if isinstance(overrides, Mapping):   # Python values stay as they are (no YAML parsing)
        for key, value in overrides.items():
            resolved = apply_overrides(resolved, [f"{key}=null"])   # checks the section name
            set_path(resolved, key, str(value) if isinstance(value, Path) else value)
    elif overrides:
        resolved = apply_overrides(resolved, list(overrides))
    check_settings(resolved)
    return resolved


def _options_for(method: str, options: dict, recipe_name: str) -> dict:
    """Keep the recipe's method options that the newly chosen method(s) have; warn about the others."""
    import logging

    valid = {f.name for name in split_method_names(method) for f in dataclasses.fields(get_method(name).config_cls)}
    dropped = sorted(set(options) - valid)
    if dropped:
        logging.getLogger("adaptvid").warning("method %s replaces the recipe's method; ignoring recipe %r option(s) %s",
                                              method, recipe_name, ", ".join(dropped))
    return {k: v for k, v in options.items() if k in valid}


def check_settings(settings: dict) -> None:
    """Validate names and types before anything is built or written (errors name the setting)."""
    if settings.get("task", "classification") not in TASKS:
        raise SettingsError(f"task must be one of {', '.join(TASKS)}, got {settings.get('task')!r}")
    for name in split_method_names(settings.get("method") or "frozen"):
        get_method(name)   # an unknown name raises with the list of methods
    options = settings.get("options") or {}
    fields = method_option_fields()
    chosen = {f.name for name in split_method_names(settings.get("method") or "frozen")
              for f in dataclasses.fields(get_method(name).config_cls)}
    for key in options:
        if key not in chosen:
            where = "another method's option" if key in fields else "no method has it"
            raise SettingsError(f"option {key!r} is not an option of {settings.get('method')} ({where}); "
                                f"`adaptvid list` shows each method's options")
    frames = (settings.get("model") or {}).get("frames", 8)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise SettingsError(f"model.frames must be an integer >= 1, got {frames!r}")
    train = settings.get("train") or {}
    if not isinstance(train, Mapping):
        raise SettingsError(f"train must be a section of training settings (train.epochs=...), got {train!r}")
    train_config(train)
    try:
        parse_views(str(train.get("views", "1x1")))
    except ValueError as error:
        raise SettingsError(f"train.views: {error}") from error
    if settings.get("output"):
        check_output_path(Path(settings["output"]))


def check_output_path(output: Path) -> None:
    """An output folder that can be a folder: not an existing file, not under one (before training, not
    after an epoch)."""
    if output.exists() and not output.is_dir():
        raise SettingsError(f"output {output} is a file, not a folder: choose another --output")
    for parent in (output, *output.parents):
        if parent.exists():
            if not parent.is_dir():
                raise SettingsError(f"output {output}: {parent} is a file, so no folder can be made under it; "
                                    "choose another --output")
            if not os.access(parent, os.W_OK | os.X_OK):   # found now, not at the first save after an epoch
                raise SettingsError(f"output {output}: {parent} is not writable; choose another --output or fix "
                                    "its permissions")
            break


def _accepts(annotation, value) -> bool:
    """Whether ``value`` fits a TrainConfig field annotation (int, float, str, bool, Optional[...])."""
    hint = {"int": int, "float": float, "str": str, "bool": bool}.get(annotation, annotation)
    if isinstance(hint, str):   # "Optional[float]" under `from __future__ import annotations`
        optional = hint.startswith("Optional[")
        inner = hint[len("Optional["):-1] if optional else hint
        if value is None:
            return optional
        return _accepts(inner, value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def train_config(train: Mapping[str, Any], progress: Optional[bool] = None) -> TrainConfig:
    """A TrainConfig from the ``train`` section, refusing unknown names and wrong types by name."""
    values = dict(train)
    if progress is not None:
        values["progress"] = progress
    if values.get("clip_grad") == 0:
        values["clip_grad"] = None
    if values.get("precision") is False:   # YAML reads `precision: no` as false
        values["precision"] = "no"
    unknown = sorted(set(values) - TrainConfig.field_names())
    if unknown:
        raise SettingsError(f"unknown train setting(s) {unknown}; valid: {sorted(TrainConfig.field_names())}")
    hints = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if not _accepts(hints[key], value):
            raise SettingsError(f"train.{key} must be {_type_name(hints[key])}, got {value!r}")
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as error:
        raise SettingsError(f"train settings: {error}") from error


def _type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if text.startswith("Optional["):
        return text.replace("Optional[", "").replace("]", " or null")
    return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(text, f"a {text}")


__all__ = ["FLAT_SETTINGS", "SettingsError", "check_settings", "method_option_fields", "parse_value",
           "resolve_settings", "set_path", "train_config"]
