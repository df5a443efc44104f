"""Prompt templates: how a class name becomes a sentence for the text tower.

A template is a string with one ``{}`` where the class name goes. A template
file holds one template per line (blank lines and ``#`` comments skipped).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

# The default ensemble for zero-shot and text classifiers: embeddings of all
# templates are averaged per class. Written for videos of actions; a single
# template is the "{}"-only or "a video of {}." choice papers often report.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a video of {}.",
    "a video of a person {}.",
    "a person is {}.",
    "a clip of {}.",
    "a short video of {}.",
    "footage of {}.",
    "an example of {}.",
    "{}",
)
PHOTO_TEMPLATE = "a photo of a {}."   # ViFi-CLIP's single template (as CLIP's image prompts)
NAME_ONLY = "{}"                      # X-CLIP: the class name alone


def check_template(template: str, where: str = "template") -> str:
    if template.count("{}") != 1:
        raise ValueError(f"{where}: {template!r} must contain exactly one {{}} where the class name goes, "
                         "e.g. 'a video of {}.'")
    return template


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        templates = (templates,)
    if not templates:
        raise ValueError("no prompt templates given; e.g. ('a video of {}.',)")
    return tuple(check_template(t) for t in templates)


def read_templates(path) -> tuple[str, ...]:
    """One template per line; names the file and line of a template without a single ``{}``."""
    path = Path(path)
    templates = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        templates.append(check_template(text, f"{path}:{number}"))
    if not templates:
        raise ValueError(f"{path}: no templates (write one per line, each with one {{}} for the class name)")
    return tuple(templates)
