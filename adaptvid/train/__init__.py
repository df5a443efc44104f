"""Training on Accelerate: the loop (``fit``), its settings, schedule and metrics log.
Evaluation and metrics belong to the tasks (``adaptvid.tasks``); re-exported here for convenience."""
from ..tasks import accuracy_metrics, evaluate, predict_scores
from .config import TrainConfig
from .trainer import OutputExistsError, fit

__all__ = ["TrainConfig", "evaluate", "predict_scores", "accuracy_metrics", "fit", "OutputExistsError"]
