"""PadWidth and a pad-then-ZipNeurons round trip preserve the function on every zoo model's pad-safe groups."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise, rel_err
from test_trace_zoo import DIGITS, ZOO

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, PadWidth, Pipeline, ZipNeurons, random_permutations


@pytest.mark.parametrize("name", sorted(ZOO))
def test_pad_then_unpad_every_pad_safe_group(name: str) -> None:
    model = randomise(ZOO[name](), seed=2)
    g = hs.trace(model, DIGITS)
    with torch.no_grad():
        y = model(DIGITS)
    for grp in g.groups:
        if not grp.pad_ok:
            continue
        padded = PadWidth(grp.id, grp.size + 3)(g)
        assert padded.group(grp.id).size == grp.size + 3
        with torch.no_grad():
            assert rel_err(y, hs.to_module(padded)(DIGITS)) <= 1e-5, f"{name} group {grp.id}"
        keep = torch.eye(grp.size + 3)[:grp.size]
        back = ZipNeurons(grp.id, keep, keep.T.clone())(padded)
        assert all(torch.equal(back.params[k], g.params[k]) for k in g.params)
        # a permutation of the padded width is a ZipNeurons with U M = I: also exact
        perm = torch.eye(grp.size + 3)[torch.randperm(grp.size + 3)]
        with torch.no_grad():
            assert rel_err(y, hs.to_module(ZipNeurons(grp.id, perm, perm.T.clone())(padded))(DIGITS)) <= 1e-5


def test_padding_every_group_at_once_regenerates_modules() -> None:
    model = randomise(hs.zoo.densenet((2, 2)), seed=3)
    g = hs.trace(model, DIGITS)
    wide = Pipeline(tuple(PadWidth(grp.id, grp.size + 2 + grp.id) for grp in g.groups if grp.pad_ok))(g)
    wide = ApplyPermutation(random_permutations(wide, 1))(wide)
    m = hs.to_module(wide)
    assert list(m.state_dict()) == list(model.state_dict())  # the user's names survive
    layer0, layer1 = m.get_submodule("features.0"), m.get_submodule("features.1")
    assert m.stem.out_channels == 24 + 2 and layer0.bn.num_features == 26
    assert layer0.conv.out_channels == 12 + 3 and layer1.conv.in_channels == 26 + 15
    with torch.no_grad():
        assert rel_err(model(DIGITS), m(DIGITS)) <= 1e-5


def test_golden_pad_of_a_small_mlp() -> None:
    g = hs.trace(hs.zoo.mlp([2], in_features=3, num_classes=2, batch_norm=True), torch.randn(2, 3))
    after = PadWidth(0, 4)(g)
    assert after.dump().splitlines()[0] == "group 0 size=4 blocks=free label=layers_0"
    assert after.params["layers.0.weight"].shape == (4, 3) and after.params["layers.3.weight"].shape == (2, 4)
    assert after.params["layers.0.weight"][2:].abs().sum() == 0 and after.params["layers.3.weight"][:, 2:].abs().sum() == 0
    # new BatchNorm channels are inert: zero scale, shift and mean, unit variance
    for buf, fill in (("weight", 0.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        assert after.params[f"layers.1.{buf}"][2:].tolist() == [fill, fill], buf


def test_refuses_a_layernorm_group_and_shrinking() -> None:
    g = hs.trace(hs.zoo.transformer("manual", depth=1), DIGITS)
    stream = next(grp for grp in g.groups if any(s.param == "pos" for s in grp.slots))
    with pytest.raises(hs.PassError, match=r"cannot pad group 0 .*LayerNorm at node .* normalises over the channels"):
        PadWidth(stream.id, stream.size + 4)(g)
    heads = next(grp for grp in g.groups if grp.structure.count > 1)
    with pytest.raises(hs.PassError, match="blocks"):
        PadWidth(heads.id, heads.size + 4)(g)
    hidden = next(grp for grp in g.groups if grp.pad_ok)
    with pytest.raises(hs.PassError, match="only grows"):
        PadWidth(hidden.id, hidden.size - 1)(g)
    with pytest.raises(hs.PassError, match="whole number"):
        PadWidth(hidden.id, hidden.size + 0.5)(g)  # type: ignore[arg-type]


def test_every_capability_has_its_reasons_most_basic_first() -> None:
    from hetsurgery.ir import Capability, PermGroup, Slot
    from hetsurgery.ir.group import REASONS

    assert set(REASONS) == set(Capability)
    heads = PermGroup(0, 4, (Slot("w", 0),), hs.Blocks(2, 2), pad_blockers=("LayerNorm",))
    assert [heads.why_not(c) for c in Capability] == ["", *["channels come in 2 blocks of 2"] * 2]
    frozen = PermGroup(0, 4, (Slot("w", 0),), hs.Blocks(1, 4), frozen="model output", zip_blockers=("softmax",))
    assert {frozen.why_not(c) for c in Capability} == {"frozen: model output"}
    free = PermGroup(0, 4, (Slot("w", 0),), hs.Blocks(1, 4), zip_blockers=("softmax",))
    assert [free.why_not(c) for c in Capability] == ["", "", "softmax"]
    assert (free.perm_ok, free.pad_ok, free.zip_ok) == (True, True, False)


def test_zip_neurons_shrinks_and_checks_shapes() -> None:
    g = hs.trace(hs.zoo.mlp([4], in_features=3, num_classes=2), torch.randn(2, 3))
    m = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    out = ZipNeurons(0, m, (m > 0).float().T)(g)
    assert out.group(0).size == 3 and hs.to_module(out)(torch.randn(5, 3)).shape == (5, 2)
    torch.testing.assert_close(out.params["layers.0.weight"][0], g.params["layers.0.weight"][:2].mean(0))
    with pytest.raises(hs.PassError, match="merge must be r x 4"):
        ZipNeurons(0, torch.eye(3), torch.eye(3))(g)
    with pytest.raises(hs.PassError, match="frozen"):
        ZipNeurons(1, torch.eye(2), torch.eye(2))(g)


def _ir_text(g: hs.ModelGraph) -> str:
    """The graph's groups and slots, then every tensor's shape: what a width pass changes."""
    shapes = [f"{name} {tuple(t.shape)}" for name, t in sorted(g.params.items()) if t.dim() > 0]
    return g.dump() + "\n" + "\n".join(shapes)


SMALL_BEFORE = """\
group 0 size=2 blocks=free label=layers_0
  produce layers.0.bias[0]
  produce layers.0.weight[0]
  produce layers.1.bias[0]
  produce layers.1.running_mean[0]
  produce layers.1.running_var[0]
  produce layers.1.weight[0]
  consume layers.3.weight[1]
group 1 size=2 blocks=free frozen='model output' label=layers_3
  produce layers.3.bias[0]
  produce layers.3.weight[0]
layers.0.bias (2,)
layers.0.weight (2, 3)
layers.1.bias (2,)
layers.1.running_mean (2,)
layers.1.running_var (2,)
layers.1.weight (2,)
layers.3.bias (2,)
layers.3.weight (2, 2)"""


def _small() -> hs.ModelGraph:
    return hs.trace(hs.zoo.mlp([2], in_features=3, num_classes=2, batch_norm=True), torch.randn(2, 3))


def test_golden_ir_before_and_after_pad_width() -> None:
    g = _small()
    assert _ir_text(g) == SMALL_BEFORE
    after = SMALL_BEFORE.replace("group 0 size=2", "group 0 size=4").replace("(2,)\nlayers.0.weight (2, 3)",
                                                                            "(4,)\nlayers.0.weight (4, 3)")
    for buf in ("bias", "running_mean", "running_var", "weight"):
        after = after.replace(f"layers.1.{buf} (2,)", f"layers.1.{buf} (4,)")
    after = after.replace("layers.3.weight (2, 2)", "layers.3.weight (2, 4)")
    assert _ir_text(PadWidth(0, 4)(g)) == after


def test_golden_ir_before_and_after_zip_neurons() -> None:
    g = _small()
    merged = ZipNeurons(0, torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0], [1.0]]))(g)
    after = SMALL_BEFORE.replace("group 0 size=2", "group 0 size=1").replace("layers.3.weight (2, 2)",
                                                                            "layers.3.weight (2, 1)")
    after = after.replace("layers.0.weight (2, 3)", "layers.0.weight (1, 3)").replace("layers.0.bias (2,)",
                                                                                      "layers.0.bias (1,)")
    for buf in ("bias", "running_mean", "running_var", "weight"):
        after = after.replace(f"layers.1.{buf} (2,)", f"layers.1.{buf} (1,)")
    assert _ir_text(merged) == after
    w = g.params["layers.0.weight"]
    torch.testing.assert_close(merged.params["layers.0.weight"][0], (w[0] + w[1]) / 2)
    torch.testing.assert_close(merged.params["layers.3.weight"][:, 0], g.params["layers.3.weight"].sum(1))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_padding_every_group_at_once_equals_padding_one_after_another(name: str) -> None:
    from hetsurgery.passes.pad_width import pad_groups

    g = hs.trace(randomise(ZOO[name](), seed=3), DIGITS)
    sizes = {grp.id: grp.size + 1 + grp.id % 3 for grp in g.groups if grp.pad_ok}
    at_once = pad_groups(g, sizes)
    one_by_one = Pipeline(tuple(PadWidth(gid, size) for gid, size in sizes.items()))(g)
    assert at_once.params.keys() == one_by_one.params.keys()
    assert all(torch.equal(at_once.params[k], one_by_one.params[k]) for k in at_once.params)
    assert [grp.size for grp in at_once.groups] == [grp.size for grp in one_by_one.groups]
