"""Evaluation: accuracy, joint/per-task accuracy on disjoint tasks, the ensemble, interpolation curves."""

from hetsurgery.evaluate.interpolation import (
           LAMBDAS,
           Curve,
           interpolate,
           lerp,
           loss_barrier,
           mean_loss,
           plot_curves,
)
from hetsurgery.evaluate.metrics import Ensemble, TaskScores, accuracy, logits_of, predictions, task_scores

__all__ = ["LAMBDAS", "Curve", "Ensemble", "TaskScores", "accuracy", "interpolate", "lerp", "logits_of",
           "loss_barrier", "mean_loss", "plot_curves", "predictions", "task_scores"]
