"""Shared test helpers: randomised BatchNorm statistics, relative errors, permute-and-compare."""

from __future__ import annotations

import torch
from torch import nn

import hetsurgery as hs
from hetsurgery.passes import ApplyPermutation, random_permutations


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm/LayerNorm statistics and affine parameters, so permutation bugs cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative max-abs error of ``b`` against the reference ``a``."""
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


def permuted(g: hs.ModelGraph, seed: int = 1) -> hs.ModelGraph:
    return ApplyPermutation(random_permutations(g, seed))(g)


def assert_permutation_invariant(model: nn.Module, x: torch.Tensor, seed: int = 1, tol: float = 1e-5,
                                 **trace_kw) -> hs.ModelGraph:
    """Trace, permute every permutable group, and check outputs agree and weights really moved."""
    model = randomise(model, seed)
    g = hs.trace(model, x, **trace_kw)
    perms = random_permutations(g, seed)
    g2 = ApplyPermutation(perms)(g)
    with torch.no_grad():
        y0, y1 = model(x), hs.to_module(g2)(x)
    assert rel_err(y0, y1) <= tol, f"{g.name}: permuted output differs by {rel_err(y0, y1):.2e}"
    for grp in g.permutable():
        if not torch.equal(perms[grp.id], torch.arange(grp.size)):
            moved = any(not torch.equal(g.params[s.param], g2.params[s.param]) for s in grp.slots)
            assert moved, f"{g.name}: group {grp.id} ({grp.label}) was permuted but no weight changed"
    return g


def randomise_calibrated(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random affine BatchNorm parameters, running statistics measured on ``x`` and then perturbed per channel.

    Unlike ``randomise`` (arbitrary statistics, which leave many ReLU units dead), units stay alive as in a
    trained network, so activation-based matching has features to match.
    """
    from hetsurgery.passes import ResetBatchNorm

    randomise(model, seed)
    g = hs.trace(model, x)
    g = ResetBatchNorm([x])(g)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                mean, var = g.params[f"{name}.running_mean"], g.params[f"{name}.running_var"]
                noise = torch.randn(mean.shape, generator=gen)
                m.running_mean.copy_(mean + 0.1 * var.sqrt() * noise)
                m.running_var.copy_(var * torch.exp(0.2 * torch.randn(var.shape, generator=gen)))
    return model.eval()


def widened(g: hs.ModelGraph, extra: int = 3, seed: int = 0) -> hs.ModelGraph:
    """A function-preserving widening of ``g`` (Net2Net): in every group that may change width, ``extra`` random
    channels are duplicated (some more than once) and each duplicated channel's outgoing weights are split by
    random positive fractions; then every group is permuted. ``U M = I`` for each group, so the function is
    exactly ``g``'s (up to rounding)."""
    from hetsurgery.passes import ZipNeurons

    gen = torch.Generator().manual_seed(seed)
    for grp in list(g.groups):
        if not grp.zip_ok:
            continue
        grp = next(x for x in g.groups if x.id == grp.id)  # widths of earlier groups changed the slots' offsets
        d = grp.size
        sources = torch.cat([torch.arange(d), torch.randint(0, d, (extra,), generator=gen)])
        merge = torch.eye(d, dtype=torch.float64)[sources]  # new channel j copies old channel sources[j]
        share = torch.rand(len(sources), generator=gen, dtype=torch.float64) + 0.2
        share = share / torch.zeros(d, dtype=torch.float64).index_add(0, sources, share)[sources]
        unmerge = merge.T * share  # old channel i's outgoing weights, split over its copies
        g = ZipNeurons(grp.id, merge, unmerge)(g)
    return permuted(g, seed + 1)


def heads_reversed(g: hs.ModelGraph, perms: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``perms`` with the heads of every group whose heads move put in reverse order (tied groups alike): a
    permutation that surely moves whole heads."""
    out = dict(perms)
    for grp in g.permutable():
        b = grp.structure
        if b.moves:
            out[grp.id] = perms[grp.id].view(b.count, b.size).flip(0).reshape(-1)
    return out
