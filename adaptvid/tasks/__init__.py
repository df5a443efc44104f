"""Tasks: what a model is trained and scored for (its data shape, loss and metrics).
Classification is here; text-video retrieval is the second task."""
from .base import Task, gather_unique
from .classification import ClassificationTask, accuracy_metrics, evaluate, predict_scores, view_scores
from .mixing import Mixer, soft_cross_entropy

__all__ = ["ClassificationTask", "Mixer", "Task", "accuracy_metrics", "evaluate", "gather_unique",
           "predict_scores", "soft_cross_entropy", "view_scores"]
