"""Model assembly: λ = 0 is the base, donors that compute the base's function (a permuted, zero-padded copy; a
copy with extra zero-residual blocks) leave it unchanged for every λ, units and λ are chosen per donor, the
record says what happened, BatchNorm statistics are recomputed after the blended units only, and the result
saves as a package whose plan.json holds the record."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from helpers import permuted, randomise, rel_err

import hetsurgery as hs
from hetsurgery.export import read_assembly
from hetsurgery.passes import InsertZeroResidual, PadWidth, Pipeline

X = torch.randn(128, 64)
IMAGES = torch.randn(64, 1, 8, 8)
LAMBDAS = (0.25, 0.5, 1.0)


def _padded_permuted_copy(model: torch.nn.Module, extra: int, seed: int) -> torch.nn.Module:
    g = hs.trace(model, X[:2])
    pads = tuple(PadWidth(grp.id, grp.size + extra) for grp in g.permutable()) if extra else ()
    return hs.to_module(permuted(Pipeline(pads)(g), seed)).eval()


def test_lambda_zero_gives_the_base_exactly() -> None:
    base = randomise(hs.zoo.mlp([16, 12], batch_norm=True), 1)
    donor = randomise(hs.zoo.mlp([20, 8, 8], batch_norm=True), 2)
    r = hs.assemble(base, [donor], [X[:64], X[64:]], lam=0.0, depth="lma", progress=False)
    with torch.no_grad():
        assert torch.equal(base(X), r.model(X))
    assert all(torch.equal(t, base.state_dict()[k]) for k, t in r.model.state_dict().items())
    assert [u.blended for u in r.units] == [False] * len(r.units)


@pytest.mark.parametrize(("align", "extra"), [("mal", 5), ("mal", 0), ("mal-pad", 5), ("mal-pad", 0), ("permute", 0),
                                             ("zip", 0), ("zip", 5)])
def test_a_permuted_padded_copy_of_the_base_leaves_its_function_unchanged(align: str, extra: int) -> None:
    """Exact for every alignment at the base's widths, and for mal and mal-pad with padding; zip zips a padded
    copy's dead channels into live clusters, which dilutes them: not exact, as the README says."""
    base = randomise(hs.zoo.mlp([16, 12, 8]), 3)
    donor = _padded_permuted_copy(base, extra, seed=4)
    exact = not (align == "zip" and extra)
    with torch.no_grad():
        want = base(X)
        for lam in LAMBDAS:
            r = hs.assemble(base, [donor], [X], lam=lam, align=align, progress=False)
            err = rel_err(want, r.model(X))
            assert (err <= 1e-4) if exact else (err > 1e-2), (align, lam, err)
    if not exact:
        return
    assert all(u.size_compatible == (extra == 0) for u in r.units if u.unit != "layers_6")
    if align == "mal":
        assert all(u.converged for u in r.units)
        assert all(u.objective_after is not None and u.objective_before is not None
                   and u.objective_after >= u.objective_before for u in r.units)


@pytest.mark.parametrize("depth", ["lma", "sma", "cla"])
def test_a_deeper_copy_with_zero_residual_blocks_leaves_the_function_unchanged(depth: str) -> None:
    base = randomise(hs.zoo.resnet((2, 1, 1)), 5)
    g = hs.trace(base, IMAGES[:2])
    donor = hs.to_module(permuted(InsertZeroResidual("stage0", (1,))(g), 6)).eval()
    with torch.no_grad():
        want = base(IMAGES)
        for lam in (0.5, 1.0):
            r = hs.assemble(base, [donor], [IMAGES], lam=lam, depth=depth, reset_bn=False, progress=False)
            assert rel_err(want, r.model(IMAGES)) <= 1e-4, (depth, lam)
    kept = [u for u in r.units if u.how.startswith("kept")]
    assert len(kept) == 1 and "(branch 0)" in kept[0].how  # the zero-residual block is the one removed
    assert r.donors[0].passes[0]["pass"] == "remove-block"
    assert r.donors[0].depth is not None


def test_with_the_default_batchnorm_reset_a_deeper_copy_gives_the_base_with_its_statistics_recomputed() -> None:
    """The README's condition: for every λ > 0 the default reset recomputes the statistics inside and after the
    blended units on the calibration data, so a copy of the base gives the base with those statistics recomputed;
    a base whose statistics are its calibration statistics comes back unchanged."""
    from hetsurgery.assembly.donor import reset_batchnorm_after
    from hetsurgery.passes import ResetBatchNorm

    base = randomise(hs.zoo.resnet((2, 1, 1)), 5)
    g = hs.trace(base, IMAGES[:2])
    donor = hs.to_module(permuted(InsertZeroResidual("stage0", (1,))(g), 6)).eval()
    recomputed = hs.to_module(reset_batchnorm_after(g, [u.key for u in g.units], [IMAGES], 512, None)).eval()
    calibrated = hs.to_module(ResetBatchNorm([IMAGES])(g)).eval()  # its statistics are those of the data
    with torch.no_grad():
        assert rel_err(base(IMAGES), recomputed(IMAGES)) > 0.1  # the reset alone changes this base
        for lam in (0.005, 0.5, 1.0):
            r = hs.assemble(base, [donor], [IMAGES], lam=lam, depth="lma", progress=False)
            assert rel_err(recomputed(IMAGES), r.model(IMAGES)) <= 1e-4, lam
            r = hs.assemble(calibrated, [donor], [IMAGES], lam=lam, depth="lma", progress=False)
            assert rel_err(calibrated(IMAGES), r.model(IMAGES)) <= 1e-4, lam


def test_a_deeper_donor_keeps_its_strided_block_where_a_segment_starts_with_one() -> None:
    base = randomise(hs.zoo.resnet((1, 1, 1)), 11)
    g = hs.trace(base, IMAGES[:2])
    deeper = Pipeline((InsertZeroResidual("stage0", (1, 1)), InsertZeroResidual("stage1", (1,))))(g)
    donor = hs.to_module(permuted(deeper, 12)).eval()
    with torch.no_grad():
        want = base(IMAGES)
        for lam in (0.5, 1.0):
            r = hs.assemble(base, [donor], [IMAGES], lam=lam, depth="lma", reset_bn=False, progress=False)
            assert rel_err(want, r.model(IMAGES)) <= 1e-4, lam
    kept = {u.unit: u.how for u in r.units if u.how.startswith("kept")}
    assert "changes the stream's shape" in kept["layer2_0_conv1"], kept
    other = randomise(hs.zoo.resnet((3, 2, 1)), 13)  # a deeper donor that is no copy: two blocks removed at once
    r = hs.assemble(base, [other], [IMAGES], lam=0.3, depth="lma", progress=False)
    with torch.no_grad():
        assert torch.isfinite(r.model(IMAGES)).all()


def test_a_transformer_absorbs_a_deeper_permuted_copy_of_itself_unchanged() -> None:
    base = randomise(hs.zoo.transformer("manual", depth=2), 9)
    g = hs.trace(base, IMAGES[:2])
    donor = hs.to_module(permuted(InsertZeroResidual("stage0", (1,))(g), 10)).eval()
    with torch.no_grad():
        want = base(IMAGES)
        for lam in (0.5, 1.0):
            r = hs.assemble(base, [donor], [IMAGES], lam=lam, align="permute", depth="lma", reset_bn=False,
                            progress=False)
            assert rel_err(want, r.model(IMAGES)) <= 1e-4, lam
    assert r.donors[0].passes[0]["pass"] == "remove-block"
    assert sum(u.blended for u in r.units) >= 2  # the base's blocks did take the donor's weights


def test_a_shallower_donor_gives_nothing_where_the_depth_plan_inserted_a_unit() -> None:
    base = randomise(hs.zoo.mlp([16, 16, 16]), 7)
    donor = randomise(hs.zoo.mlp([24]), 8)
    r = hs.assemble(base, [donor], [X], lam=0.5, depth="lma", progress=False)
    inserted = [u for u in r.units if not u.counterpart]
    assert len(inserted) == 2 and all(not u.blended and "no counterpart" in u.note for u in inserted)
    for u in inserted:  # left as they were
        prefix = u.unit.replace("_", ".") + "."
        assert all(torch.equal(t, base.state_dict()[k]) for k, t in r.model.state_dict().items()
                   if k.startswith(prefix))


def test_donors_are_absorbed_one_after_another_with_their_own_units_and_lambdas() -> None:
    base = randomise(hs.zoo.mlp([16, 16]), 9)
    first, second = randomise(hs.zoo.mlp([16, 16]), 10), randomise(hs.zoo.mlp([24, 12]), 11)
    r = hs.assemble(base, [hs.Donor(first, lam={"layers_0": 0.2, "layers_4": 0.6}, name="first"),
                           hs.Donor(second, layers=["layers_2"])], [X], lam=0.4, progress=False)
    assert [(u.donor, u.unit, u.lam) for u in r.units] == [(0, "layers_0", 0.2), (0, "layers_4", 0.6),
                                                            (1, "layers_2", 0.4)]
    assert [d.name for d in r.donors] == ["first", "donor 1 (MLP)"]
    state, mine = r.model.state_dict(), base.state_dict()
    assert not torch.equal(state["layers.2.weight"], mine["layers.2.weight"])
    only_first = hs.assemble(base, [hs.Donor(first, lam={"layers_0": 0.2, "layers_4": 0.6})], [X], progress=False)
    assert torch.equal(state["layers.0.weight"], only_first.model.state_dict()["layers.0.weight"])
    assert "first" in str(r) and "layers_2" in str(r)


def test_batchnorm_statistics_are_recomputed_inside_and_after_the_blended_units_only() -> None:
    base = randomise(hs.zoo.mlp([16, 16, 16], batch_norm=True), 12)
    donor = randomise(hs.zoo.mlp([16, 16, 16], batch_norm=True), 13)
    r = hs.assemble(base, [donor], [X], layers=["layers_3"], lam=0.5, progress=False)
    state, mine = r.model.state_dict(), base.state_dict()
    assert torch.equal(state["layers.1.running_mean"], mine["layers.1.running_mean"])  # before: kept
    assert torch.equal(state["layers.1.running_var"], mine["layers.1.running_var"])
    assert not torch.equal(state["layers.4.running_var"], mine["layers.4.running_var"])  # inside: recomputed
    assert not torch.equal(state["layers.7.running_mean"], mine["layers.7.running_mean"])  # after: recomputed
    assert "recomputed" in r.batchnorm


def test_an_assembled_model_saves_as_a_package_with_its_record(tmp_path: pathlib.Path) -> None:
    base, donor = randomise(hs.zoo.mlp([16, 16]), 14), randomise(hs.zoo.mlp([12, 20, 12]), 15)
    r = hs.assemble(base, [donor], [X], lam={"layers_0": 0.1, "layers_2": 0.3}, depth="sma", progress=False)
    folder = r.save(tmp_path / "assembled")
    record = read_assembly(folder)
    assert record is not None and record == json.loads(json.dumps(r.to_dict()))
    assert [u["unit"] for u in record["units"]] == ["layers_0", "layers_2"]
    assert record["donors"][0]["depth"]["models"][0]["stages"][0]["balance"] == "merge"
    assert json.loads((folder / "plan.json").read_text())["format"] == "hetsurgery-plan/2"
    with torch.no_grad():
        assert rel_err(r.model(X), hs.export.load(folder)(X)) <= 1e-6
    assert read_assembly(hs.export.save(hs.trace(base, X[:2]), tmp_path / "plain")) is None


class _DictOut(torch.nn.Module):
    """A model written here, not in the zoo, whose forward returns a dict."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.body(x)}


def test_a_model_returning_a_dict_absorbs_its_permuted_padded_copy_and_refuses_other_outputs() -> None:
    base = _DictOut().eval()
    donor = _padded_permuted_copy(base, 3, seed=14)
    with torch.no_grad():
        r = hs.assemble(base, [donor], [X], lam=0.6, progress=False)
        assert rel_err(base(X)["logits"], r.model(X)["logits"]) <= 1e-4
    with pytest.raises(hs.MergeInputError, match=r"outputs \{'logits': \(2, 7\)\} on the base's inputs, the base "
                                                 r"\{'logits': \(2, 5\)\}"):
        hs.assemble(base, [_DictOut(7)], [X], progress=False)
