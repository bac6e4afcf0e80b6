"""Evaluation: joint and per-task accuracy, the ensemble, interpolation on 21 points and the loss barrier."""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hetsurgery as hs
from hetsurgery.evaluate import Ensemble, interpolate, plot_curves, task_scores
from hetsurgery.evaluate.interpolation import LAMBDAS, Curve, lerp


class Fixed(nn.Module):
    """Returns prepared logits for the inputs 0..n-1 (the input is the example's index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx]


def test_joint_accuracy_takes_all_classes_and_per_task_only_the_tasks() -> None:
    labels = torch.tensor([2, 2, 7, 7])
    logits = torch.full((4, 10), -5.0)
    logits[0, 2] = 1.0                      # right everywhere
    logits[1, 7], logits[1, 3] = 2.0, 1.0   # joint says 7 (wrong); inside task A (0-4) it says 3 (wrong)
    logits[2, 1], logits[2, 7] = 3.0, 1.0   # joint says 1 (wrong); inside task B (5-9) it says 7 (right)
    logits[3, 7] = 1.0                      # right everywhere
    logits[1, 2] = 0.5                      # ... and example 1 ranks 2 below 3: task A stays wrong
    data = [(torch.arange(4), labels)]
    s = task_scores(Fixed(logits), data, ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)))
    assert s.joint == pytest.approx(0.5)
    assert s.per_task == (pytest.approx(0.5), pytest.approx(1.0))
    assert s.task_avg == pytest.approx(0.75) and s.row() == [s.joint, *s.per_task, s.task_avg]


def test_ensemble_is_the_mean_of_logits() -> None:
    a, b = Fixed(torch.tensor([[1.0, 0.0]])), Fixed(torch.tensor([[0.0, 3.0]]))
    assert Ensemble([a, b])(torch.tensor([0])).tolist() == [[0.5, 1.5]]


def test_interpolation_has_21_points_ends_at_the_models_and_its_barrier_follows_the_definition() -> None:
    assert tuple(i / 20 for i in range(21)) == LAMBDAS
    torch.manual_seed(0)
    a, b = hs.zoo.mlp([8], in_features=4, num_classes=3), hs.zoo.mlp([8], in_features=4, num_classes=3)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    curve = interpolate(a, b, [(x, y)])
    assert curve.lambdas == LAMBDAS and len(curve.loss) == len(curve.accuracy) == 21
    with torch.no_grad():
        assert curve.loss[0] == pytest.approx(F.cross_entropy(a(x), y).item())
        assert curve.loss[-1] == pytest.approx(F.cross_entropy(b(x), y).item())
        mid = lerp(a, b, 0.5)
        torch.testing.assert_close(mid.layers[0].weight, (a.layers[0].weight + b.layers[0].weight) / 2)
    assert curve.barrier == pytest.approx(max(curve.loss) - (curve.loss[0] + curve.loss[-1]) / 2)
    assert Curve((0.0, 0.5, 1.0), (1.0, 3.0, 2.0), (0.0, 0.0, 0.0)).barrier == pytest.approx(1.5)


def test_plot_is_written(tmp_path: pathlib.Path) -> None:
    c = Curve((0.0, 0.5, 1.0), (1.0, 3.0, 2.0), (0.9, 0.5, 0.8))
    out = plot_curves({"unaligned": c}, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predictions_leave_the_models_mode_alone() -> None:
    m = hs.zoo.mlp([4], in_features=2, num_classes=2).train()
    task_scores(m, [(torch.randn(3, 2), torch.tensor([0, 1, 0]))], ((0,), (1,)))
    assert m.training
