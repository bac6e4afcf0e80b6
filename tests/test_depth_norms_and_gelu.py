"""MLPs normalised between their layers (LayerNorm, RMSNorm) or activated by GELU are depth-merged: their
layers form one stage, ``add`` is refused before any data is read with one message saying that ``merge`` can,
``merge`` fuses across them (a LayerNorm taken as affine with its measured scale: exact where every sample has
the same spread), and a stage neither balance can even out says so once, for both."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import FuseReluSegment
from hetsurgery.plan.fuse_signs import Estimator, estimate_signs, norm_scales

X = torch.randn(128, 64)


def _mlp(hidden: list[int], norm: type[nn.Module] | None = None, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = 64
    for w in hidden:
        layers += [nn.Linear(prev, w), *([norm(w)] if norm is not None else []), act()]
        prev = w
    return nn.Sequential(*layers, nn.Linear(prev, 10)).eval()


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm, nn.BatchNorm1d])
def test_layers_with_a_normalisation_form_one_stage(norm: type[nn.Module]) -> None:
    g = hs.trace(_mlp([16, 16, 16], norm), X[:2])
    assert [len(st) for st in g.stages] == [3]


@pytest.mark.parametrize(("norm", "act"), [(nn.LayerNorm, nn.ReLU), (nn.RMSNorm, nn.ReLU), (None, nn.GELU),
                                           (nn.LayerNorm, nn.GELU), (None, nn.SiLU)])
def test_add_is_refused_saying_merge_can_and_merge_runs(norm: type[nn.Module] | None, act: type[nn.Module],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    deep, shallow = _mlp([16, 16, 16], norm, act), _mlp([16], norm, act)
    reads: list[int] = []

    class Counted(list):  # the refusal comes before the unit similarities read the data
        def __iter__(self):  # type: ignore[no-untyped-def]
            reads.append(1)
            return super().__iter__()

    why = "normalise every sample" if norm is not None else "is not the identity on the values there"
    relu_like = "" if act is nn.ReLU else rf" \({act.__name__.lower()} taken as a ReLU\)"
    with pytest.raises(hs.MergeInputError, match=rf"^balance='add' cannot even out stage0 .*{why}.*\. "
                                                 rf"balance='merge' can: it fuses model 0 \(Sequential\)'s layers of "
                                                 rf"stage0 across their activations, an approximation.*{relu_like}$"):
        hs.merge([deep, shallow], Counted([X]), depth="lma", progress=False)
    assert len(reads) <= 2  # the one-shot check and the first batch for tracing: no similarity pass
    r = hs.merge([deep, shallow], [X], depth="lma", balance="merge", progress=False)
    assert len(r.graph.units) == len(hs.trace(shallow, X[:2]).units) and len(r.report.fusions) == 1
    assert bool(torch.isfinite(r.model(X)).all())
    assert [p["pass"] for p in r.depth.model(0).passes] == ["fuse-relu-segment"]  # type: ignore[union-attr]


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm])
def test_a_layer_norm_is_fused_exactly_where_every_sample_has_the_same_spread(norm: type[nn.Module]) -> None:
    """The first layer is the identity and every sample a permutation of one vector, so the LayerNorm divides
    each by the same σ, and its shift keeps the ReLU's input positive (D = 1): the fused unit is exact."""
    model = _mlp([64, 16], norm)
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(64))
        model[1].bias.zero_()
        if isinstance(model[2], nn.LayerNorm):
            model[2].bias.fill_(10.0)
        else:
            model[1].bias.fill_(10.0)  # RMSNorm has no shift: positive inputs stay positive
    base = torch.randn(64)
    x = torch.stack([base[torch.randperm(64)] for _ in range(32)])
    g = hs.trace(model, x[:2])
    units = tuple(g.stage("stage0").units)
    scales = norm_scales(g, units, [x])
    assert len(scales) == 1 and scales[0] is not None
    fused = FuseReluSegment(units, estimate_signs(g, units, [x], Estimator.SIGN_OF_SUM), scales)(g)
    with torch.no_grad():
        want, got = model(x), hs.to_module(fused)(x)
    assert ((want - got).abs().max() / want.abs().max()).item() <= 1e-5
    assert FuseReluSegment.from_spec(fused.passes[-1].spec()).scales == scales


def test_a_stage_neither_balance_can_even_out_says_so_once_for_both() -> None:
    deep, shallow = _mlp([16, 16, 16], act=nn.Tanh), _mlp([16], act=nn.Tanh)
    for balance in ("add", "merge"):
        with pytest.raises(hs.MergeInputError) as info:
            hs.merge([deep, shallow], [X], depth="cla", balance=balance, progress=False)
        text = str(info.value)
        assert text.startswith("neither balance can even out stage0") and text.count("balance='add' cannot") == 1
        assert "tanh is not the identity" in text and "ends in tanh" in text and " can:" not in text
