"""Recipes: one YAML file per published configuration, ``recipes/<method>/<name>.yaml``.

A recipe holds the settings of one run (the same keys the CLI sets), the
paper's reported result with the views it used, and the command that runs it.
``--set key=value`` overrides any setting by its dotted path
(``train.epochs=3``, ``options.bottleneck=192``).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

SECTIONS = {
    "backbone": str, "method": str, "weights": (str, type(None)),
    "options": dict, "model": dict, "data": dict, "train": dict,
    "paper": dict, "name": str, "description": str, "command": str, "expected": dict, "output": str, "task": str,
}
REQUIRED = ("backbone", "method")


class RecipeError(ValueError):
    pass


PACKAGE_DIR = Path(__file__).resolve().parent.parent


def recipe_dirs() -> list[Path]:
    """Where named recipes are looked up: $ADAPTVID_RECIPES, then the recipes installed with the package
    (``adaptvid/recipes/``, package data of a wheel), then a source checkout's top-level ``recipes/``
    (an editable install); the first folder that has a name wins."""
    dirs = [Path(p) for p in os.environ.get("ADAPTVID_RECIPES", "").split(os.pathsep) if p]
    dirs += [PACKAGE_DIR / "recipes", PACKAGE_DIR.parent / "recipes"]
    return [d for d in dirs if d.is_dir()]


def list_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in recipe_dirs():
        for path in sorted(root.rglob("*.yaml")):
            found.setdefault(path.relative_to(root).with_suffix("").as_posix(), path)
    return found


def find_recipe(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    recipes = list_recipes()
    if name in recipes:
        return recipes[name]
    matches = [key for key in recipes if key.endswith("/" + name) or key.split("/")[0] == name]
    if len(matches) == 1:
        return recipes[matches[0]]
    hint = f"; did you mean one of {', '.join(matches)}?" if matches else "; `adaptvid recipes list` shows them"
    raise RecipeError(f"no recipe named {name!r}{hint}")


def load_recipe(name: str) -> dict:
    path = find_recipe(name)
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: not valid YAML ({getattr(error, 'problem', error)})") from error
    validate_recipe(recipe, path)
    recipe.setdefault("name", name)
    recipe["_path"] = str(path)
    return recipe


def validate_recipe(recipe: Any, path: Path | str = "<recipe>") -> None:
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of settings, got {type(recipe).__name__}")
    for key in REQUIRED:
        if key not in recipe:
            raise RecipeError(f"{path}: missing required key {key!r}")
    for key, value in recipe.items():
        if key.startswith("_"):
            continue
        if key not in SECTIONS:
            raise RecipeError(f"{path}: unknown key {key!r}; allowed: {', '.join(SECTIONS)}")
        if not isinstance(value, SECTIONS[key]):
            raise RecipeError(f"{path}: {key!r} should be a {SECTIONS[key]}, got {type(value).__name__}")


def parse_value(text: str) -> Any:
    """A --set value: YAML scalars, so 3 -> int, 1e-3 -> float, true -> bool, null -> None."""
    if text.strip().lower() in ("no", "yes", "on", "off"):  # YAML 1.1 would make these booleans
        return text.strip()
    value = yaml.safe_load(text)
    if isinstance(text, str) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string; people mean a number
            return float(text)
        except ValueError:
            return value
    return value


def apply_overrides(settings: dict, overrides: list[str]) -> dict:
    settings = copy.deepcopy(settings)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set takes KEY=VALUE (e.g. train.epochs=3), got {item!r}")
        parts = key.split(".")
        if parts[0] not in SECTIONS:
            raise RecipeError(f"--set {item!r}: unknown section {parts[0]!r}; allowed: {', '.join(SECTIONS)}")
        node = settings
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {part!r} is not a section")
        node[parts[-1]] = parse_value(raw)
    return settings


def reported_numbers(paper: dict) -> str:
    """The paper's numbers in one phrase: top-1, zero-shot accuracies, base/novel/harmonic mean, or
    text-to-video R@1."""
    views = f" ({paper['views']} views)" if paper.get("views") else ""
    if "top1" in paper:
        return f"  paper top-1 {paper['top1']}{views}"
    if isinstance(paper.get("zero_shot"), dict):
        shown = ", ".join(f"{k} {v}" for k, v in paper["zero_shot"].items() if not str(k).endswith("*"))
        return f"  paper zero-shot {shown}{views}"
    if {"base", "novel", "hm"} <= set(paper):
        return f"  paper base/novel/HM {paper['base']}/{paper['novel']}/{paper['hm']}{views}"
    if "t2v_R@1" in paper:
        return f"  paper text->video R@1 {paper['t2v_R@1']}"
    return ""
