"""Merging models of different depth: the self-merge certificate for every depth method, depth- and
width-heterogeneous pairs for every depth x balance that applies, and clear refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import permuted, randomise, rel_err
from torch import nn

import hetsurgery as hs
from hetsurgery.plan.depth import Balance

METHODS = ("cla", "sma", "lma")


def _load_skipping(deep: nn.Module, shallow: nn.Module, rename: Callable[[str], str]) -> nn.Module:
    """``shallow`` with the weights of ``deep`` under ``rename``d keys: the deep model without the skipped units."""
    state = deep.state_dict()
    shallow.load_state_dict({k: state[rename(k)] for k in shallow.state_dict()})
    return shallow.eval()


def _mlp_pair(at: int) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """D′: an MLP of four hidden layers whose hidden layer ``at`` computes the identity; S: the same MLP without it."""
    deep = randomise(hs.zoo.mlp([12, 12, 12, 12]), 1)
    with torch.no_grad():
        deep.layers[2 * at].weight.copy_(torch.eye(12))
        deep.layers[2 * at].bias.zero_()

    def rename(k: str) -> str:
        i, leaf = int(k.split(".")[1]), k.split(".")[2]
        return f"layers.{i if i < 2 * at else i + 2}.{leaf}"

    return deep, _load_skipping(deep, hs.zoo.mlp([12, 12, 12]), rename), torch.randn(256, 64)


def _resnet_pair(at: int) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """D′: a ResNet whose block ``at`` of stage 0 (of three) has a zero branch; S: the ResNet without it."""
    deep = randomise(hs.zoo.resnet((3, 2, 1)), 2)
    with torch.no_grad():
        deep.layer1[at].bn2.weight.zero_()
        deep.layer1[at].bn2.bias.zero_()

    def rename(k: str) -> str:
        if not k.startswith("layer1."):
            return k
        i = int(k.split(".")[1])
        return f"layer1.{i if i < at else i + 1}.{k[9:]}"

    return deep, _load_skipping(deep, randomise(hs.zoo.resnet((2, 2, 1)), 3), rename), torch.randn(256, 1, 8, 8)


def _transformer_pair(at: int) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """D′: a transformer whose block ``at`` (of three) adds zero (both branches end in zeroed projections); S:
    without it."""
    deep = randomise(hs.zoo.transformer("manual", depth=3), 4)
    with torch.no_grad():
        for p in (deep.blocks[at].attn.out.weight, deep.blocks[at].attn.out.bias, deep.blocks[at].fc2.weight,
                  deep.blocks[at].fc2.bias):
            p.zero_()

    def rename(k: str) -> str:
        if not k.startswith("blocks."):
            return k
        i = int(k.split(".")[1])
        return f"blocks.{i if i < at else i + 1}.{k[9:]}"

    return deep, _load_skipping(deep, hs.zoo.transformer("manual", depth=2), rename), torch.randn(256, 1, 8, 8)


def certificate_holds(method: str, at: int, deep_units: int) -> bool:
    """Where the README says the self-merge certificate holds: the missing unit is never the first of its stage
    (nothing is inserted in front of a stage's first unit), and for CLA, which fixes last↔last when the shallow
    stage has two units or more, not the last either."""
    return at != 0 and not (method == "cla" and at == deep_units - 1 and deep_units - 1 >= 2)


CERTIFICATE_CASES = [(name, at) for name, ats in (("mlp", (1, 2, 3)), ("resnet", (0, 1, 2)), ("transformer", (0, 1, 2)))
                     for at in ats]
CERTIFICATE_PAIRS = {"mlp": (_mlp_pair, 4), "resnet": (_resnet_pair, 3), "transformer": (_transformer_pair, 3)}


@pytest.mark.parametrize(("pair", "at"), CERTIFICATE_CASES)
@pytest.mark.parametrize("method", METHODS)
def test_self_merge_certificate(pair: str, at: int, method: str) -> None:
    """D′ has a unit that computes the identity; S is D′ without it, channels permuted. Balancing S by the depth
    plan and merging it with D′ (permute, no BatchNorm reset) gives D′'s function back exactly where
    ``certificate_holds`` says, and measurably not elsewhere (the gap is real, and documented)."""
    make, deep_units = CERTIFICATE_PAIRS[pair]
    deep, shallow, x = make(at)
    with torch.no_grad():
        assert rel_err(deep(x), shallow(x)) < 1e-5  # S computes what D′ computes
    s = hs.to_module(permuted(hs.trace(shallow, x[:2]), 5)).eval()
    result = hs.merge([deep, s], [x[:128], x[128:]], depth=method, balance="add", method="permute", reset_bn=False,
                      progress=False)
    with torch.no_grad():
        err = rel_err(deep(x), result.model(x))
    assert (err <= 1e-4) if certificate_holds(method, at, deep_units) else (err > 1e-3), err
    assert result.depth is not None and result.depth.anchor == 0
    assert set(result.model.state_dict()) == set(deep.state_dict())  # the deeper model's topology and names


PAIRS: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp 5v3": (lambda: hs.zoo.mlp([24, 20, 16, 16, 12]), lambda: hs.zoo.mlp([16, 12, 12]), (64,)),
    "vgg 3v2": (lambda: hs.zoo.vgg([8, 8, 8, "M", 12, 12, 12], hidden=16),
                lambda: hs.zoo.vgg([6, 6, "M", 8, 8], hidden=12), (1, 8, 8)),
    "resnet 3v2": (lambda: hs.zoo.resnet((3, 3, 3)), lambda: hs.zoo.resnet((2, 2, 2)), (1, 8, 8)),
    "resnet 3v1 x2": (lambda: hs.zoo.resnet((3, 3, 3)), lambda: hs.zoo.resnet((1, 1, 1), 2), (1, 8, 8)),
    "transformer 4v2": (lambda: hs.zoo.transformer("manual", depth=4), lambda: hs.zoo.transformer("manual", depth=2),
                        (1, 8, 8)),
}
APPLIES = [(name, depth, balance) for name in PAIRS for depth in METHODS
           for balance in (("add", "merge") if name.startswith("mlp") else ("add",))]


@pytest.mark.parametrize(("name", "depth", "balance"), APPLIES)
def test_depth_and_width_heterogeneous_merges_run(name: str, depth: str, balance: str) -> None:
    make_a, make_b, shape = PAIRS[name]
    torch.manual_seed(0)
    a, b = randomise(make_a(), 1), randomise(make_b(), 2)
    x = torch.randn(96, *shape)
    r = hs.merge([a, b], [x[:48], x[48:]], depth=depth, balance=balance, method="zip", progress=False)
    with torch.no_grad():
        y = r.model(x[:5])
    assert y.shape == (5, 10) and bool(torch.isfinite(y).all())
    anchor, other = (a, b) if balance == "add" else (b, a)  # add: the deepest is the anchor; merge: the shallowest
    assert len(r.graph.units) == len(hs.trace(anchor, x[:2]).units)  # the anchor's topology
    assert r.depth is not None and all(sa.balance is Balance(balance) for md in r.depth.models for sa in md.stages)
    text = str(r.report)
    assert "depth plan (anchor: model" in text and "similarity" in text and "statistics" in text
    balanced = r.depth.model(1 if balance == "add" else 0)  # the other model, balanced to the anchor's depth
    kinds = {"add": {"insert-identity", "insert-zero-residual"}, "merge": {"fuse-relu-segment"}}[balance]
    assert balanced.passes and {p["pass"] for p in balanced.passes} <= kinds
    own = len(hs.trace(other, x[:2]).units)
    assert own < len(r.graph.units) if balance == "add" else own > len(r.graph.units)


def test_different_depths_without_depth_are_refused_with_the_stages_that_differ() -> None:
    with pytest.raises(hs.MergeInputError, match=r"model 1 \(ResNet\) differs in depth from model 0 \(ResNet\) \(stage0: 3 blocks in model 0 \(ResNet\), 2 in "
                                                 r"model 1 \(ResNet\)\).*depth='cla', 'sma' or 'lma'"):
        hs.merge([hs.zoo.resnet((3, 2, 2)), hs.zoo.resnet((2, 2, 2))], [torch.randn(8, 1, 8, 8)], progress=False)


def test_balance_merge_is_refused_on_residual_and_convolutional_stages() -> None:
    x = [torch.randn(16, 1, 8, 8)]
    with pytest.raises(hs.MergeInputError, match=r"stage0 of model 0 .* is a stage of residual blocks, and only Linear "
                                                 r"layers fuse .*\. balance='add' can: it inserts identity units"):
        hs.merge([hs.zoo.resnet((3, 1, 1)), hs.zoo.resnet((2, 1, 1))], x, depth="lma", balance="merge", progress=False)
    with pytest.raises(hs.MergeInputError, match=r"Conv2d with kernel \(3, 3\).*balance='add' can"):
        hs.merge([hs.zoo.vgg([8, 8, 8, "M", 8]), hs.zoo.vgg([8, 8, "M", 8])], x, depth="cla", balance="merge",
                 progress=False)


def test_stages_that_cannot_be_paired_are_refused() -> None:
    x = [torch.randn(16, 1, 8, 8)]
    with pytest.raises(hs.MergeInputError, match=r"stages of model 1 \(VGG\) \(layer, layer, layer\) cannot be paired "
                                                 r"with those of model 0 \(VGG\) \(layer, layer, layer, layer\)"):
        hs.merge([hs.zoo.vgg([8, "M", 8, "M", 8]), hs.zoo.vgg([8, "M", 8])], x, depth="lma", progress=False)
    with pytest.raises(hs.MergeInputError, match="cannot be paired"):
        hs.merge([hs.zoo.mlp([8, 8]), hs.zoo.vgg([8, "M", 8], hidden=8)],
                 [torch.randn(16, 1, 8, 8)], depth="sma", progress=False)


def test_bad_depth_options_are_refused_before_any_work() -> None:
    a, b = hs.zoo.mlp([8, 8]), hs.zoo.mlp([8])
    for kwargs, says in (({"depth": "deep"}, "depth must be one of cla, sma, lma"),
                         ({"depth": "lma", "balance": "squash"}, "balance must be one of add, merge"),
                         ({"depth": "lma", "depth_cost": "width"}, "use it with depth='cla'"),
                         ({"depth": "cla", "balance": "merge", "estimator": "vote"}, "estimator must be one of"),
                         ({"balance": "merge"}, "balance='merge' only matter for models of different depth")):
        with pytest.raises(hs.MergeInputError, match=says):
            hs.merge([a, b], [torch.randn(8, 64)], progress=False, **kwargs)  # type: ignore[arg-type]


def test_cla_with_the_width_cost_needs_no_data_and_align_balances_too() -> None:
    a, b = randomise(hs.zoo.mlp([16, 16, 16, 16]), 1), randomise(hs.zoo.mlp([16, 16]), 2)
    r = hs.merge([a, b], None, depth="cla", depth_cost="width", method="weight", example_inputs=torch.randn(2, 64),
                 progress=False)
    assert r.depth is not None and r.depth.models[0].stages[0].score.value == "width"
    aligned = hs.align([a, b], [torch.randn(32, 64)], method="permute", depth="lma")
    x = torch.randn(4, 64)
    with torch.no_grad():  # each model carried into the merged space keeps its function (identity layers, permutations)
        assert rel_err(a(x), aligned[0](x)) <= 1e-5 and rel_err(b(x), aligned[1](x)) <= 1e-5


@pytest.mark.parametrize("make", [lambda: (hs.zoo.resnet((3, 2, 2)), hs.zoo.resnet((2, 1, 2)), (1, 8, 8))],
                         ids=["resnet"])
def test_the_statistics_skip_inserted_zero_residual_blocks_and_the_merge_is_the_same(make, monkeypatch) -> None:
    """Statistics of the balanced models leave out what computes nothing they need: the inside of the blocks
    inserted into the shallow model (matched to the deep model's channels alone, no data needed) and the blocks'
    zero branches (each add returns its stream). The merge is the one the full pass gives, exactly. (Both merges
    gather their statistics in a pass of their own, not in the similarity pass: ``merging.one_pass``.)"""
    import hetsurgery.merging.driver as driver
    import hetsurgery.merging.one_pass as one_pass
    import hetsurgery.plan.stats as stats

    monkeypatch.setattr(one_pass, "possible", lambda *a, **k: False)

    torch.manual_seed(0)
    deep, shallow, shape = make()
    deep, shallow = randomise(deep, 1), randomise(shallow, 2)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(16, *shape, generator=gen) for _ in range(3)]
    convs: list[int] = []
    real_joint = stats.joint_module

    def counted(*args, **kwargs):
        gm = real_joint(*args, **kwargs)
        convs.append(sum(isinstance(m, nn.Conv2d) for n in gm.graph.nodes if n.op == "call_module"
                         for m in [gm.get_submodule(str(n.target))]))
        return gm

    monkeypatch.setattr(stats, "joint_module", counted)
    fast = hs.merge([deep, shallow], data, method="zip", depth="lma", progress=False)
    real_collect = driver.collect_stats

    def every_group(graphs, data, *, groups=None, shortcuts=(), **kwargs):  # the full pass over both whole models
        return real_collect(graphs, data, **kwargs)

    monkeypatch.setattr(driver, "collect_stats", every_group)
    full = hs.merge([deep, shallow], data, method="zip", depth="lma", progress=False)
    inserted = sum(ins.count for sa in fast.depth.model(1).stages for ins in sa.insertions)  # blocks
    assert inserted and convs[1] - convs[0] == 2 * inserted  # the two convs of each inserted block no longer run
    assert fast.graph.params.keys() == full.graph.params.keys()
    assert all(torch.equal(fast.graph.params[k], full.graph.params[k]) for k in full.graph.params)


class _InPlaceBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.nn.functional.relu(out + x, inplace=True)  # writes into the add's output


class _InPlaceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(_InPlaceBlock(8), _InPlaceBlock(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def test_a_zero_branch_is_skipped_only_where_nothing_writes_into_the_add() -> None:
    from hetsurgery.merging.inserted import zero_branches
    from hetsurgery.passes import InsertZeroResidual

    x = torch.randn(2, 1, 8, 8)
    for model, skipped in ((hs.zoo.resnet((2, 1, 1)), True), (_InPlaceNet(), False)):
        g = hs.trace(randomise(model.eval(), 3), x)
        st = g.stages[0]
        deeper = InsertZeroResidual(st.key, (len(st),))(g)
        new = [k for k in deeper.stage(st.key).units if k not in st.units]
        found = zero_branches(deeper, new)
        assert bool(found) is skipped
        assert not zero_branches(deeper, list(st.units))  # real blocks' branches are not zero
