"""The torch.export front end on plain torch models: fx first, torch.export when fx fails (saying why), an
``ExportedProgram`` taken as it is, keyword inputs, dynamic batch sizes, the model's own names, unknown ops
named; and the zoo traced through export lifts to exactly the groups fx finds."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise, rel_err
from torch import nn

import hetsurgery as hs
from hetsurgery.ir import FrontEndKind
from hetsurgery.passes import ApplyPermutation, random_permutations


class Loop(nn.Module):
    """Loops over a dim of a tensor: torch.fx cannot trace it, torch.export can (the batch dim stays dynamic)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.relu(self.a(x)))
        steps = [h[:, i] * (i + 1) for i in range(h.shape[1])]  # fx: a Proxy is no integer
        return self.b(torch.stack(steps, 1))


class Masked(nn.Module):
    """Keyword inputs, optional ones that change the computation, a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.a, self.b = nn.Embedding(10, 8), nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                embeds: torch.Tensor | None = None, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(ids) if embeds is None else embeds
        h = self.b(torch.relu(self.a(h))) * scale
        if mask is not None:
            h = h * mask[..., None]
        return h.sum(1), h


class Spectral(nn.Module):
    """An op no table knows (an FFT over the channels) on a channel-carrying tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.fft.fft(self.a(x)).real)


def _ids(b: int, s: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 10, (b, s), generator=torch.Generator().manual_seed(seed))


def test_a_model_fx_cannot_trace_is_exported_and_the_graph_says_why() -> None:
    model = randomise(Loop())
    g = hs.trace(model, torch.randn(2, 3, 4))
    assert g.front_end.kind is FrontEndKind.EXPORT
    assert g.front_end.reason.startswith("torch.fx failed: TypeError: 'Proxy' object cannot be interpreted as an integer")
    assert "test_export_frontend.py" in g.front_end.reason  # the model's line, not hetsurgery's
    assert g.summary().splitlines()[1].startswith("front end: torch.export (strict=False); torch.fx failed")
    assert "dynamic dims: x 0" in g.summary().splitlines()[1]
    x = torch.randn(5, 3, 4)  # another batch size than the example's
    with torch.no_grad():
        assert rel_err(model(x), hs.to_module(g)(x)) <= 1e-6
    assert {n.target for n in g.module.graph.nodes if n.op == "call_module"} == {"a", "norm", "b"}


def test_frontend_fx_raises_the_fx_error_naming_the_models_line() -> None:
    with pytest.raises(hs.TracingError, match=r"torch.fx cannot trace the model in forward of Loop "
                                              r"\(.*test_export_frontend.py:\d+\): `steps = \[h"):
        hs.trace(Loop(), torch.randn(2, 3, 4), frontend="fx")
    with pytest.raises(hs.TracingError, match="frontend='onnx': use one of 'auto', 'fx', 'export'"):
        hs.trace(Loop(), torch.randn(2, 3, 4), frontend="onnx")


@pytest.mark.parametrize("name", ["mlp", "vgg", "resnet20", "transformer", "densenet", "mobilenet"])
def test_the_zoo_through_export_lifts_to_the_groups_fx_finds(name: str) -> None:
    model = randomise(hs.zoo.ZOO[name](), seed=2)
    x = torch.randn(2, 64) if name == "mlp" else torch.randn(2, 1, 8, 8)
    fx_graph, exported = hs.trace(model, x), hs.trace(model, x, frontend="export")
    assert exported.front_end.kind is FrontEndKind.EXPORT and exported.front_end.reason == "asked for"
    assert exported.dump() == fx_graph.dump()
    assert set(exported.params) == set(fx_graph.params)
    bigger = torch.randn(5, *x.shape[1:])
    moved = hs.to_module(ApplyPermutation(random_permutations(exported, 3))(exported))
    with torch.no_grad():
        assert rel_err(model(bigger), moved(bigger)) <= 1e-5


def test_an_exported_program_is_lifted_under_the_models_names() -> None:
    model = randomise(hs.zoo.resnet20(in_channels=1), seed=1)
    x = torch.randn(2, 1, 8, 8)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False)
    g = hs.trace(ep)  # its own example inputs
    assert g.name == "ResNet" and g.front_end.reason == "given an ExportedProgram"
    assert g.dump() == hs.trace(model, x).dump()
    assert set(g.params) <= set(model.state_dict())
    layers = {type(m) for m in g.module.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.Linear} <= layers  # the calls are layers again
    y = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert rel_err(model(y), hs.to_module(g)(y)) <= 1e-6


def test_keyword_inputs_through_fx_fix_the_others_at_their_defaults() -> None:
    model = Masked().eval()
    ids, mask = _ids(2, 5), torch.ones(2, 5)
    g = hs.trace(model, {"mask": mask, "ids": ids})  # any order: the graph takes them in forward's
    assert g.front_end.kind is FrontEndKind.FX
    assert [n.name for n in g.module.graph.nodes if n.op == "placeholder"] == ["ids", "mask"]
    assert [t is x for t, x in zip(g.example_inputs, (ids, mask), strict=True)] == [True, True]
    other = (_ids(3, 7, 1), (torch.rand(3, 7) > 0.5).float())
    with torch.no_grad():
        want, got = model(*other), hs.to_module(g)(*other)
    assert all(rel_err(a, b) <= 1e-6 for a, b in zip(want, got, strict=True))
    scaled = hs.trace(model, {"ids": ids}, concrete_args={"scale": 2.0})  # fixed away from its default
    with torch.no_grad():
        assert rel_err(model(ids, scale=2.0)[0], hs.to_module(scaled)(ids)[0]) <= 1e-6


def test_concrete_args_away_from_their_defaults_trace_with_positional_inputs() -> None:
    class Pool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, pool: str = "mean") -> torch.Tensor:
            h = self.conv(x)
            return self.fc(h.mean((2, 3)) if pool == "mean" else h.amax((2, 3)))

    model, x = Pool().eval(), torch.randn(2, 1, 6, 6)
    g = hs.trace(model, x, concrete_args={"pool": "max"})  # fx's assert on the fixed value no longer fires
    assert [n.name for n in g.module.graph.nodes if n.op == "placeholder"] == ["x"]
    with torch.no_grad():
        assert rel_err(model(x, pool="max"), hs.to_module(g)(x)) <= 1e-6


def test_keyword_inputs_through_export_are_named_inputs_of_the_graph() -> None:
    model = randomise(Masked())
    g = hs.trace(model, {"ids": _ids(2, 5), "mask": torch.ones(2, 5), "scale": 0.5}, frontend="export")
    assert [n.name for n in g.module.graph.nodes if n.op == "placeholder"] == ["ids", "mask"]
    assert "dynamic dims: ids 0, 1; mask 0, 1" in str(g.front_end)
    ids, mask = _ids(4, 3, 2), torch.rand(4, 3)
    with torch.no_grad():
        want, got = model(ids, mask, scale=0.5), hs.to_module(g)(ids=ids, mask=mask)
    assert isinstance(got, tuple) and all(rel_err(a, b) <= 1e-6 for a, b in zip(want, got, strict=True))


def test_a_batch_of_one_keeps_the_batch_dim_static_and_says_so() -> None:
    g = hs.trace(hs.zoo.mlp([8]), torch.randn(1, 64), frontend="export")
    assert "the batch dim of x is static: the example's batch is 1 (give an example batch of 2 or more" \
        in str(g.front_end)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_an_op_no_table_knows_is_named_in_the_frozen_reasons(frontend: str) -> None:
    g = hs.trace(Spectral(), torch.randn(3, 4), frontend=frontend)
    hidden = next(grp for grp in g.groups if hs.Slot("a.weight", 0) in grp.slots)
    assert hidden.frozen is not None and not hidden.perm_ok
    node = next(n for n in g.module.graph.nodes if "fft" in str(n.target))
    assert f"at node {node.name}" in hidden.frozen and "fft" in hidden.frozen
    assert "which the channel rules do not know" in hidden.frozen
    missing = g.uncovered()  # every parameter coverage leaves out has a reason that names the op and node
    assert missing and g.coverage() < 1
    assert all("fft" in why and f"node {node.name}" in why for why in missing.values()), missing
    assert all(f"{name}: {why}" in g.summary() for name, why in missing.items())


def test_tracing_leaves_the_model_as_it_was() -> None:
    model = Masked().train()
    model.a.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    before = {k: (v, v.clone()) for k, v in model.state_dict(keep_vars=True).items()}
    for frontend in ("fx", "export"):
        hs.trace(model, {"ids": _ids(2, 5), "mask": torch.ones(2, 5)}, frontend=frontend)
    assert {name: m.training for name, m in model.named_modules()} == flags
    after = model.state_dict(keep_vars=True)
    assert all(after[k] is t and torch.equal(t, copy) for k, (t, copy) in before.items())
