"""Untraceable models raise TracingError naming the construct; leaf_modules / concrete_args fix them."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_permutation_invariant
from torch import nn

import hetsurgery as hs


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(3, 6), Gate(), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.gate(torch.relu(self.a(x))))


def test_data_dependent_if_raises_tracing_error() -> None:
    with pytest.raises(hs.TracingError) as info:
        hs.trace(Net(), torch.randn(2, 3))
    msg = str(info.value)
    assert "if x.sum() > 0" in msg and "Gate" in msg
    assert "leaf_modules" in msg and "concrete_args" in msg
    assert msg.startswith("Net:")


def test_leaf_module_makes_it_traceable_and_frozen() -> None:
    g = assert_permutation_invariant(Net(), torch.randn(2, 3), leaf_modules=(Gate,))
    a = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert not a.perm_ok and "gate" in (a.frozen or "")
    g2 = hs.trace(Net(), torch.randn(2, 3), leaf_modules=("gate",))
    assert g2.dump() == g.dump()


def test_concrete_args_fix_a_flag() -> None:
    class Flagged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
            h = self.a(x)
            if relu:
                h = torch.relu(h)
            return self.b(h)

    g = hs.trace(Flagged(), torch.randn(2, 3), concrete_args={"relu": True})
    assert sum(grp.perm_ok for grp in g.groups) == 1


def test_bad_example_input_is_a_tracing_error_naming_shapes_and_node(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(hs.TracingError, match=r"inputs of shape \(2, 7\) do not fit the model at node layers_0 "
                                              r"\(Linear 'layers.0', which expects inputs of shape \(\*, 64\)\)"):
        hs.trace(hs.zoo.mlp([4]), torch.randn(2, 7))
    with pytest.raises(hs.TracingError, match=r"\(2, 3, 8, 8\) do not fit .* node conv1 .*\(N, 1, \*, \*\)"):
        hs.trace(hs.zoo.resnet20(), torch.randn(2, 3, 8, 8))
    assert "Traceback" not in capsys.readouterr().err  # fx's ShapeProp used to print one
    with pytest.raises(hs.TracingError) as caught:
        hs.trace(hs.zoo.resnet20(), torch.randn(2, 3, 8, 8))
    assert "While executing" not in str(caught.value) and "tlparse" not in str(caught.value)  # no fx internals
