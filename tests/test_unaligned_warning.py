"""Never silently worse: a merge that leaves hidden channels unaligned because their group is frozen says so
(a ``UnalignedGroupWarning`` and a line of the report) with the reason and what to do; the report's ``how``
says ``frozen``, not ``identity``. A model that returns its features beside its logits is the common case."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import hetsurgery as hs
from hetsurgery import UnalignedGroupWarning

X = torch.randn(64, 64)
METHODS = ["permute", "weight", "ot", "zip", "mal", "mal-pad"]


class WithFeatures(nn.Module):
    """Returns ``(logits, features)``: the features are an output, so their channels must keep their order."""

    def __init__(self, features: bool = True) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 10)
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.a(x))
        return (self.b(h), h) if self.features else self.b(h)


class CumSum(nn.Module):
    """A cumulative sum over the channels: no rule follows it, and permuting its channels changes its output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cumsum(torch.relu(self.a(x)), dim=1))


def _pair(factory: type[nn.Module], **kw: bool) -> list[nn.Module]:
    torch.manual_seed(1)
    return [factory(**kw), factory(**kw)]


@pytest.mark.parametrize("method", METHODS)
def test_features_returned_beside_the_logits_are_left_unaligned_with_a_warning(method: str) -> None:
    models = _pair(WithFeatures)
    says = (rf"^{method} leaves group 0 \(a, 16 channels\) unaligned: it is frozen \(model output\), so every method "
            r"averages its channels position by position, as plain averaging does\. The models return these hidden "
            r"features.*merge models whose forward returns only the outputs that must stay in place")
    with pytest.warns(UnalignedGroupWarning, match=says):
        r = hs.merge(models, [X], method=method, progress=False)
    assert len(r.report.unaligned) == 1 and f"warning: {r.report.unaligned[0]}" in str(r.report)
    assert [how for *_, how in r.report.groups] == ["frozen", "frozen"]
    plain = hs.merge(models, [X], method="average", progress=False).model  # what the warning says it is
    assert torch.equal(r.model.state_dict()["a.weight"], plain.state_dict()["a.weight"])


def test_dropping_the_features_as_the_warning_says_lets_every_method_align_them() -> None:
    models = _pair(WithFeatures, features=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnalignedGroupWarning)
        r = hs.merge(models, [X], method="permute", progress=False)
    assert r.report.unaligned == () and [how for *_, how in r.report.groups] == ["permutation", "frozen"]
    merged = WithFeatures()  # the merged weights load back into the model that returns its features
    merged.load_state_dict(r.model.state_dict())
    assert torch.equal(merged(X)[0], r.model(X))


def test_channels_an_unknown_op_freezes_are_warned_about_with_what_to_do() -> None:
    with pytest.warns(UnalignedGroupWarning, match=r"^zip leaves group 0 \(a, 16 channels\) unaligned: it is frozen "
                                                   r"\(touched by function torch\.cumsum.*write it with ops the rules "
                                                   r"know"):
        hs.align(_pair(CumSum), [X], method="zip", progress=False)


def test_plain_averaging_and_models_whose_only_frozen_channels_are_their_inputs_and_logits_give_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnalignedGroupWarning)
        hs.merge(_pair(WithFeatures), [X], method="average", progress=False)
        for factory, x in ((lambda: hs.zoo.mlp([16, 16]), X), (lambda: hs.zoo.resnet((1, 1, 1)), X.view(-1, 1, 8, 8)),
                           (lambda: hs.zoo.transformer("manual", depth=1), X.view(-1, 1, 8, 8))):
            r = hs.merge([factory(), factory()], [x], method="zip", progress=False)
            assert r.report.unaligned == () and "warning" not in str(r.report)
