"""Zero-shot classification: any CLIP-based model scored against a class set it was not trained on.

``zero_shot_model(backbone, class_names)``: the frozen image tower, mean of frame
embeddings, and the class names filled into prompt templates (the CLIP
zero-shot baseline every evaluation should report). ``set_classes(model,
class_names)``: points a trained model at another class set (cross-dataset
zero-shot, base-to-novel): a text classifier keeps its templates and prompt
learner and is re-encoded for the new names; a linear head is replaced by a
text classifier when the model's video embedding lives in CLIP's joint space.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .video_model import VideoModel, build_model
from ..text import DEFAULT_TEMPLATES, TextClassifier, check_templates


def zero_shot_model(backbone: str, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                    num_frames: int = 8, weights: Optional[str] = None) -> VideoModel:
    """Frozen CLIP: frame embeddings averaged over time, cosine similarity with the class prompts."""
    model = build_model(backbone, "frozen", class_names=list(class_names), num_frames=num_frames, weights=weights)
    model.set_text_classifier(check_templates(templates))
    return model.eval()


def set_classes(model: VideoModel, class_names: Sequence[str], templates: Optional[Sequence[str]] = None) -> VideoModel:
    """Re-point ``model`` (in place) at ``class_names``; ``templates`` replaces the classifier's templates."""
    names = [str(name) for name in class_names]
    if isinstance(model.head, TextClassifier):
        model.head.set_class_names(names, templates)
        model.class_names = names
    else:
        model.class_names = names
        try:
            model.set_text_classifier(check_templates(templates or DEFAULT_TEMPLATES))
        except ValueError as error:
            raise ValueError(f"this model cannot be evaluated zero-shot: {error}") from error
    model._num_classes = len(names)
    return model
