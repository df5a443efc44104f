"""Training and evaluation on Accelerate."""
from .config import TrainConfig
from .evaluate import evaluate, predict_scores
from .metrics import accuracy_metrics
from .trainer import OutputExistsError, fit

__all__ = ["TrainConfig", "evaluate", "predict_scores", "accuracy_metrics", "fit", "OutputExistsError"]
