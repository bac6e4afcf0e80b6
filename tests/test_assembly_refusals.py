"""Bad assembly input is refused before any donor is touched, with a message that names the donor, the unit or
the value and says what to do."""

from __future__ import annotations

import math

import pytest
import torch

import hetsurgery as hs

X = torch.randn(32, 64)


def _assemble(donor: torch.nn.Module | hs.Donor, **kw: object) -> hs.AssemblyResult:
    return hs.assemble(hs.zoo.mlp([16, 16]), [donor], [X], progress=False, **kw)


@pytest.mark.parametrize(("donor", "kw", "says"), [
    (hs.zoo.mlp([16, 16], in_features=32), {}, "donor 0 \\(MLP\\) does not run on the base's inputs"),
    (hs.zoo.mlp([16, 16], num_classes=5), {}, "outputs \\(2, 5\\) on the base's inputs, the base \\(2, 10\\)"),
    (hs.zoo.mlp([16]), {}, "differs in depth from base \\(stage0: 2 layers in base, 1 in donor 0 "
                           "\\(MLP\\)\\): give depth='lma', 'sma' or 'cla'"),
    (hs.zoo.mlp([16, 16]), {"layers": ["layers_1"]}, "layers names 'layers_1', which is not a unit of the base; "
                                                     "its units are layers_0, layers_2, layers_4"),
    (hs.zoo.mlp([16, 16]), {"lam": {"head": 0.5}}, "lam names 'head', which is not a unit of the base"),
    (hs.zoo.mlp([16, 16]), {"layers": ["layers_0", "layers_2"], "lam": {"layers_0": 0.5}},
     "layers names 'layers_2' but lam gives it no λ"),
    (hs.zoo.mlp([16, 16]), {"layers": ["layers_0"], "lam": {"layers_0": 0.5, "layers_2": 0.1}},
     "lam gives a λ to \\['layers_2'\\], which layers leaves out"),
    (hs.zoo.mlp([16, 16]), {"layers": "first"}, "layers must be 'all' or a list of the base's unit keys"),
    (hs.zoo.mlp([24, 16]), {"align": "permute"}, "has width 16 in .* and 24 in .*needs equal widths"),
    (hs.zoo.mlp([16, 16]), {"align": "nope"}, "unknown alignment method 'nope'"),
    (hs.zoo.mlp([16, 16]), {"max_sweeps": 0}, "option max_sweeps must be at least 1"),
    (hs.zoo.mlp([16, 16]), {"depth": "deep"}, "depth must be one of cla, sma, lma, not 'deep'"),
    (hs.Donor(hs.zoo.mlp([16, 16]), lam=2.0, name="D"), {}, "D: lam must be a number in \\[0, 1\\]"),
])
def test_bad_input_is_refused_with_a_clear_message(donor: torch.nn.Module | hs.Donor, kw: dict, says: str) -> None:
    with pytest.raises(hs.MergeInputError, match=says):
        _assemble(donor, **kw)


@pytest.mark.parametrize("lam", [-0.1, 1.5, math.nan, math.inf, True, "0.3"])
def test_lambda_outside_zero_one_is_refused(lam: object) -> None:
    with pytest.raises(hs.MergeInputError, match="must be a number in \\[0, 1\\] \\(0 keeps the base, 1 takes the donor\\)"):
        _assemble(hs.zoo.mlp([16, 16]), lam=lam)
    with pytest.raises(hs.MergeInputError, match="lam\\['layers_2'\\] must be a number in \\[0, 1\\]"):
        _assemble(hs.zoo.mlp([16, 16]), lam={"layers_2": lam})


def test_other_refusals() -> None:
    with pytest.raises(hs.MergeInputError, match="needs a list of one or more donors"):
        hs.assemble(hs.zoo.mlp([16]), [], [X])
    with pytest.raises(hs.MergeInputError, match="one-shot iterator"):
        hs.assemble(hs.zoo.mlp([16]), [hs.zoo.mlp([16])], iter([X]))
    with pytest.raises(hs.MergeInputError, match="give example_inputs= or calibration data"):
        hs.assemble(hs.zoo.mlp([16]), [hs.zoo.mlp([16])])
    nan = hs.zoo.mlp([16])
    with torch.no_grad():
        nan.layers[0].weight[0, 0] = float("nan")
    with pytest.raises(hs.MergeInputError, match=r"donor 0 \(MLP\): layers\.0\.weight holds NaN or Inf"):
        hs.assemble(hs.zoo.mlp([16]), [nan], [X])
    with pytest.raises(hs.MergeInputError, match="compares the models' units on calibration data; give data"):
        hs.assemble(hs.zoo.mlp([16]), [hs.zoo.mlp([16, 16])], example_inputs=X[:2], depth="lma")
