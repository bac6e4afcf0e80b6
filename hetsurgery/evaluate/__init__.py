"""Evaluation: accuracy, joint/per-task accuracy on disjoint tasks, the ensemble, interpolation curves."""

from hetsurgery.evaluate.interpolation import LAMBDAS, Curve, interpolate, lerp, plot_curves
from hetsurgery.evaluate.metrics import Ensemble, TaskScores, accuracy, predictions, task_scores

__all__ = ["LAMBDAS", "Curve", "Ensemble", "TaskScores", "accuracy", "interpolate", "lerp", "plot_curves",
           "predictions", "task_scores"]
