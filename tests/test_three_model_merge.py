"""Three models of different depth and width, trained on disjoint digit tasks, merged into one: its joint
accuracy (argmax over all ten classes) is above every single model's (fixed seed)."""

from __future__ import annotations

import torch

import hetsurgery as hs
from hetsurgery.evaluate import task_scores
from hetsurgery.zoo.data import digits, loader
from hetsurgery.zoo.train import train

TASKS3 = ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))
ARCHS = ((64, 64, 64), (128, 96), (96,))


def test_three_heterogeneous_models_merge_above_the_best_single_model() -> None:
    models = []
    for k, (hidden, classes) in enumerate(zip(ARCHS, TASKS3, strict=True)):
        torch.manual_seed(k)
        models.append(train(hs.zoo.mlp(list(hidden)), digits("train", classes), epochs=10, seed=k))
    test = loader(digits("test"))
    calib = loader(torch.utils.data.Subset(digits("train"), range(0, 1347, 2)), 128)
    singles = [task_scores(m, test, TASKS3).joint for m in models]
    assert max(singles) < 0.45  # each model knows its own classes only
    r = hs.merge(models, calib, method="zip", depth="lma", progress=False)
    assert r.depth is not None and r.depth.anchor == 0  # the deepest model
    assert [len(md.stages[0].units_shallow) for md in r.depth.models] == [2, 1]
    merged = task_scores(r.model, test, TASKS3)
    assert merged.joint > max(singles) + 0.05, (merged, singles)
    assert min(merged.per_task) > 0.6
