"""OT respects heads whose channels keep their order (rotary embeddings, ``Blocks(inner=False)``): it transports
whole heads, identity inside, so its maps are ones ``MapGroups`` accepts; a RoPE decoder merged by ``ot`` with
its head-permuted copy is the model, and with an unrelated model its q/k maps still keep every head in order."""

from __future__ import annotations

import pytest
import torch
from decoder_models import RotaryDecoder
from helpers import heads_reversed, rel_err

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, random_permutations
from hetsurgery.passes.block_maps import check_blocks

IDS = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(0))
DATA = [torch.randint(0, 40, (8, 6), generator=torch.Generator().manual_seed(i)) for i in range(4)]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return RotaryDecoder(mode="sdpa", kv_heads=2, depth=1).eval()


@pytest.mark.parametrize("cost", ["activations", "weights"])
def test_ot_gives_a_rope_model_back_from_its_head_permuted_copy(cost: str) -> None:
    model = _model(0)
    g = hs.trace(model, IDS)
    copy = hs.to_module(ApplyPermutation(heads_reversed(g, random_permutations(g, seed=5)))(g)).eval()
    merged = hs.merge([model, copy], DATA, method="ot", cost=cost, progress=False).model
    with torch.no_grad():
        assert rel_err(model(IDS), merged(IDS)) <= 1e-4


@pytest.mark.parametrize("cost", ["activations", "weights"])
def test_ot_keeps_rotary_heads_in_order_between_unrelated_models(cost: str) -> None:
    a, b = _model(0), _model(1)
    g = hs.trace(a, IDS)
    heads = [grp for grp in g.groups if grp.structure.count > 1]
    assert any(not grp.structure.inner for grp in heads)  # the q/k heads
    plan = hs.merge([a, b], DATA, method="ot", cost=cost, progress=False).plan
    for k in range(2):
        maps = {grp.id: plan.groups[grp.id].merge[k].float() for grp in heads}
        check_blocks(g, maps)  # raises where a map reorders channels inside a rotary head (or splits q/k from v/o)
