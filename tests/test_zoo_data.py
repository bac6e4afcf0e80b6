"""The embedded digits data (fixed stratified split, task splits) and the deterministic trainer."""

from __future__ import annotations

import torch

import hetsurgery as hs
from hetsurgery.zoo.data import TASKS, digits
from hetsurgery.zoo.train import train


def fresh() -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights every time
    return hs.zoo.mlp([32])


def test_digits_split_is_fixed_stratified_and_normalised() -> None:
    train, test = digits("train"), digits("test")
    assert len(train) == 1347 and len(test) == 450
    assert torch.equal(digits("train").tensors[0], train.tensors[0])  # the same split every time
    counts = torch.bincount(test.tensors[1], minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 47  # ~45 of each class: stratified
    x = train.tensors[0]
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3


def test_task_splits_are_disjoint_and_hold_only_their_classes() -> None:
    assert TASKS == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    a, b = digits("train", classes=TASKS[0]), digits("train", classes=TASKS[1])
    assert set(a.tensors[1].tolist()) == set(TASKS[0]) and set(b.tensors[1].tolist()) == set(TASKS[1])
    assert len(a) + len(b) == 1347


def test_training_is_deterministic_and_learns() -> None:
    data = digits("train", classes=TASKS[0])
    runs = [train(fresh(), data, epochs=3, seed=4) for _ in range(2)]
    for p, q in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(p, q)
    other = train(fresh(), data, epochs=3, seed=5)  # another seed: another shuffle
    assert not torch.equal(next(other.parameters()), next(runs[0].parameters()))
    test = digits("test", classes=TASKS[0])
    with torch.no_grad():
        acc = (runs[0](test.tensors[0]).argmax(1) == test.tensors[1]).float().mean()
    assert acc > 0.8
