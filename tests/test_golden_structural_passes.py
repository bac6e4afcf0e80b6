"""Golden tests: the groups (``dump()``) and the generated fx code of an MLP and a ResNet-20 before and after
each structural pass, as literal text in ``tests/golden/``. A change to what a pass produces shows here as a
readable diff; regenerate a file by writing ``_render(case)`` to it and reading the diff before committing."""

from __future__ import annotations

import pathlib

import pytest
import torch

import hetsurgery as hs
from hetsurgery.passes import FuseReluSegment, InsertIdentity, InsertZeroResidual

GOLDEN = pathlib.Path(__file__).parent / "golden"


def _mlp() -> hs.ModelGraph:
    return hs.trace(hs.zoo.mlp([8, 6]), torch.randn(2, 64), name="mlp")


def _resnet() -> hs.ModelGraph:
    return hs.trace(hs.zoo.resnet20(), torch.randn(2, 1, 8, 8), name="resnet20")


CASES = {
    "mlp": lambda: _mlp(),
    "mlp-insert-identity": lambda: InsertIdentity("stage0", (1,))(_mlp()),
    "mlp-fuse-relu-segment": lambda: FuseReluSegment(("layers_0", "layers_2"), (torch.ones(8),))(_mlp()),
    "resnet20": lambda: _resnet(),
    "resnet20-insert-zero-residual": lambda: InsertZeroResidual("stage1", (3,))(_resnet()),
}


def _render(case: str) -> str:
    g = CASES[case]()
    return f"{g.dump()}\n\n{g.module.code.strip()}\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_dump_and_code_match_the_golden_text(case: str) -> None:
    assert _render(case) == (GOLDEN / f"{case}.txt").read_text()
