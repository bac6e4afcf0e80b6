"""Depth surgery on transformers written as libraries write them: pre-norm decoder blocks are one stage of
blocks (the rotary table and the mask, computed from the stream's size, are shared constants, not part of a
block), zero-residual blocks keep the function exactly (LLaMA Pro's block expansion: output and down
projections zero), post-norm blocks are a stage too but refuse insertion with the reason."""

from __future__ import annotations

import pytest
import torch
from decoder_models import Conv1DStack, PostNormEncoder, RotaryDecoder
from helpers import rel_err
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import InsertZeroResidual

IDS = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(0))
OTHER = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))


def _perturbed(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


@pytest.mark.parametrize("mode", ["sdpa", "gqa", "eager"])
def test_a_pre_norm_decoder_is_one_stage_of_blocks(mode: str) -> None:
    g = hs.trace(RotaryDecoder(mode=mode, depth=3), IDS)
    (stage,) = g.stages
    assert stage.units == ("layers_0_attn_q_proj", "layers_1_attn_q_proj", "layers_2_attn_q_proj")
    assert all(g.unit(k).kind is hs.ir.UnitKind.BLOCK for k in stage.units)


@pytest.mark.parametrize(("make", "positions"), [(lambda: RotaryDecoder(mode="sdpa"), (0,)),
                                                 (lambda: RotaryDecoder(mode="gqa"), (1, 2, 2)),
                                                 (lambda: RotaryDecoder(mode="eager"), (2,)),
                                                 (Conv1DStack, (1,))])
def test_zero_residual_blocks_expand_a_decoder_exactly(make, positions: tuple[int, ...]) -> None:
    model = _perturbed(make())
    g = hs.trace(model, IDS)
    stage = g.stages[0]
    deeper = InsertZeroResidual(stage.key, positions)(g)
    assert len(deeper.stage(stage.key).units) == len(stage.units) + len(positions)
    with torch.no_grad():
        for x in (IDS, OTHER):
            assert rel_err(model(x), hs.to_module(deeper)(x)) == 0.0


def test_inserted_decoder_blocks_zero_their_output_and_down_projections() -> None:
    g = hs.trace(_perturbed(RotaryDecoder(mode="sdpa")), IDS)
    deeper = InsertZeroResidual(g.stages[0].key, (2,))(g)
    new = {n: t for n, t in deeper.params.items() if n.startswith("layers.2.")}
    assert {n for n, t in new.items() if not t.any()} == {"layers.2.attn.o_proj.weight", "layers.2.down.weight"}
    assert torch.equal(new["layers.2.attn.q_proj.weight"], g.params["layers.1.attn.q_proj.weight"])


def test_post_norm_blocks_are_a_stage_and_refuse_zero_residual_blocks() -> None:
    g = hs.trace(PostNormEncoder(depth=3), IDS)
    (stage,) = g.stages
    assert len(stage.units) == 3
    with pytest.raises(hs.PassError, match=r"post-norm, LayerNorm\(x \+ f\(x\)\)"):
        InsertZeroResidual(stage.key, (1,))(g)
