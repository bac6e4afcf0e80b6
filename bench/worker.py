"""One benchmark configuration in a fresh process: ``python -m bench.worker '<json spec>'`` prints JSON.

Kinds: ``weight`` (hetsurgery vs rebasin weight matching, alternating), ``activation`` (a data-driven
merge and its floors: the plain forward passes; the forward passes with one Gram GEMM per group, the honest floor;
the bare LAPs), ``hetero`` (a width-heterogeneous merge),
``depth`` (a depth-heterogeneous merge and its floor).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from typing import Any

import torch
from torch import nn

import hetsurgery as hs
from bench.measure import Run, measure, median, release, rss_kib
from hetsurgery.passes import ApplyPermutation, random_permutations


def warm_baseline() -> float:
    """RSS once everything is imported and each tool has run once on a tiny model: the fixed cost."""
    import rebasin  # noqa: F401  (imported here so it counts in the baseline)

    tiny_a, tiny_b = hs.zoo.resnet((1, 1, 1), in_channels=3).eval(), hs.zoo.resnet((1, 1, 1), in_channels=3).eval()
    x = torch.randn(2, 3, 32, 32)
    for fn in CONTENDERS.values():
        fn(tiny_a, copy.deepcopy(tiny_b), x)
    hs.merge([tiny_a, tiny_b], [x], method="zip", progress=False)
    release()
    return rss_kib() / 1024


def resnet_pair(width: int, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return hs.zoo.resnet20(width, in_channels=3).eval(), hs.zoo.resnet20(width, in_channels=3).eval()


def param_mib(*models: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for m in models for p in m.state_dict().values()) / 2**20


def randomise_bn(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)


def average(a: nn.Module, b: nn.Module) -> nn.Module:
    out = copy.deepcopy(a)
    sb = b.state_dict()
    with torch.no_grad():
        for k, t in out.state_dict().items():
            if t.is_floating_point():
                t.copy_((t + sb[k]) / 2)
    return out


def run_hetsurgery(a: nn.Module, b: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    r = hs.merge([a, b], None, method="weight", example_inputs=x, progress=False)
    return {"stages": dict(r.report.seconds), "model": r.model}


def run_rebasin(a: nn.Module, b: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    from rebasin import PermutationCoordinateDescent

    torch.manual_seed(0)
    clock = time.perf_counter()
    pcd = PermutationCoordinateDescent(a, b, x)
    traced = time.perf_counter() - clock
    pcd.rebasin()  # permutes b in place
    matched = time.perf_counter() - clock - traced
    merged = average(a, b)
    return {"stages": {"trace": traced, "matching": matched,
                       "combine": time.perf_counter() - clock - traced - matched}, "model": merged}


CONTENDERS = {"hetsurgery": run_hetsurgery, "rebasin": run_rebasin}


def independent_pair(width: int, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    from bench.independent_resnet import ResNet20

    torch.manual_seed(seed)
    return ResNet20(width).eval(), ResNet20(width).eval()


def weight(spec: dict[str, Any]) -> dict[str, Any]:
    baseline = warm_baseline()
    a, b = independent_pair(spec["width"])
    x = torch.randn(2, 3, 32, 32)
    runs: dict[str, list[Run]] = {name: [] for name in CONTENDERS}
    for i in range(spec["repeats"] + 1):  # the first round warms up and is dropped
        for name, fn in CONTENDERS.items():
            b_in = copy.deepcopy(b) if name == "rebasin" else b  # rebasin permutes its model_b in place
            run = measure(lambda fn=fn, b_in=b_in: _strip(fn(a, b_in, x)))
            if i:
                runs[name].append(run)
            del b_in
    out: dict[str, Any] = {"width": spec["width"], "params_mib": param_mib(a, b), "baseline_mib": baseline,
                           "parameters": sum(p.numel() for p in a.parameters())}
    for name, rs in runs.items():
        m = median(rs)
        out[name] = {"seconds": m.seconds, "peak_mib": m.peak_mib, "stages": m.detail["stages"],
                     "all_seconds": [r.seconds for r in rs], "error": _self_merge_error(name, a, x)}
    return out


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    d.pop("model", None)
    return d


def _self_merge_error(name: str, model: nn.Module, x: torch.Tensor) -> float:
    """Merge a model (real BatchNorm statistics) with a permuted copy of itself; relative output error."""
    model = copy.deepcopy(model)
    randomise_bn(model, 1)
    g = hs.trace(model, x)
    twin = copy.deepcopy(model)  # the same class (rebasin compares the two models' module graphs)
    twin.load_state_dict(hs.to_module(ApplyPermutation(random_permutations(g, 2))(g)).state_dict())
    merged = CONTENDERS[name](model, twin, x)["model"].eval()
    xs = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y, z = model(xs), merged(xs)
    return float((y - z).abs().max() / y.abs().max())


def calibration(n: int, batch: int = 128, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(min(batch, n - i), 3, 32, 32, generator=gen) for i in range(0, n, batch)]


def forward_floor(a: nn.Module, b: nn.Module, data: list[torch.Tensor]) -> dict[str, Any]:
    with torch.no_grad():
        for x in data:
            a(x)
            b(x)
    return {}


def site_taps(model: nn.Module, x: torch.Tensor, *, every: bool = False) -> tuple[nn.Module, list[int]]:
    """``model`` returning the features at the first site of each of its permutable groups (what a correlation
    method must observe, at the least; ``every``: at every site of every group), and the dim of each that holds
    the channels."""
    from hetsurgery.ir.lowering import tap_module

    g = hs.trace(model, x)
    sites = [s for grp in g.permutable() for s in (grp.sites if every else grp.sites[:1])]
    assert all((s.offset, s.inner, s.stride, s.run, s.skip) == (0, 1, 1, 0, 0) for s in sites)  # plain channels
    return tap_module(g, [s.node for s in sites]), [s.dim for s in sites]


def gram_floor(taps: nn.Module, dims: list[int], other: nn.Module, data: list[torch.Tensor], *,
               cross: bool) -> dict[str, Any]:
    """The Gram GEMMs any correlation merge needs, timed alone (``stages["gemm"]``; the forward passes that make the
    features are the forward floor's): per batch, one per permutable group (float32, summed into float64), the
    cross-correlation ``XᵀY`` of the two models' features at the group's first site when ``cross`` (``other``
    returns the same sites), else ``XᵀX`` of ``taps``' own features (every site of the anchor of a depth merge)."""
    sums: list[torch.Tensor | None] = [None] * len(dims)
    seconds = 0.0
    with torch.no_grad():
        for x in data:
            mine, theirs = taps(x), other(x)
            clock = time.perf_counter()
            for i, d in enumerate(dims):
                f = mine[i].movedim(d, -1)
                u = f.reshape(-1, f.shape[-1])
                v = theirs[i].movedim(d, -1).reshape(-1, f.shape[-1]) if cross else u
                g = (u.T @ v).double()
                sums[i] = g if sums[i] is None else sums[i].add_(g)
            seconds += time.perf_counter() - clock
    return {"stages": {"gemm": seconds}}


def lap_floor(matrices: list[torch.Tensor]) -> dict[str, Any]:
    from scipy.optimize import linear_sum_assignment

    for m in matrices:
        linear_sum_assignment(m, maximize=True)
    return {}


def lap_matrices(a: nn.Module, b: nn.Module, data: list[torch.Tensor]) -> list[Any]:
    """The matrices activation matching solves: each group's cross-correlation between the two models."""
    from hetsurgery.plan.stats import collect_stats

    graphs = [hs.trace(m, data[0][:2]) for m in (a, b)]
    stats = collect_stats(graphs, data, progress=False)
    return [s.block(s.similarity(), 0, 1).numpy() for s in stats.values()]


def activation(spec: dict[str, Any]) -> dict[str, Any]:
    baseline = warm_baseline()
    a, b = resnet_pair(spec["width"])
    data = calibration(spec["samples"])
    matrices = lap_matrices(a, b, data)
    (taps_a, dims), (taps_b, _) = site_taps(a, data[0][:2]), site_taps(b, data[0][:2])
    contenders: dict[str, Any] = {
        "forward": lambda: forward_floor(a, b, data),
        "gram": lambda: gram_floor(taps_a, dims, taps_b, data, cross=True),
        "lap": lambda: lap_floor(matrices),
        **{m: (lambda m=m: {"stages": dict(hs.merge([a, b], data, method=m, progress=False).report.seconds)})
           for m in spec["methods"]},
    }
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for i in range(spec["repeats"] + 1):
        for name, fn in contenders.items():
            run = measure(fn)
            if i:
                runs[name].append(run)
    out: dict[str, Any] = {"width": spec["width"], "samples": spec["samples"], "params_mib": param_mib(a, b),
                           "baseline_mib": baseline, "parameters": sum(p.numel() for p in a.parameters())}
    for name, rs in runs.items():
        m = median(rs)
        out[name] = {"seconds": m.seconds, "peak_mib": m.peak_mib, "stages": m.detail.get("stages", {}),
                     "all_seconds": [r.seconds for r in rs]}
    return out


def scaling(spec: dict[str, Any]) -> dict[str, Any]:
    """One point of a scaling curve: the merge and its floor, at one width and one calibration size."""
    spec = {**spec, "methods": [spec["method"]]}
    return activation(spec)


HETERO = {
    "mlp 64-64 / 128-96": (lambda: hs.zoo.mlp([64, 64]), lambda: hs.zoo.mlp([128, 96]), (1, 8, 8)),
    "resnet20 x1 / x2": (lambda: hs.zoo.resnet20(1), lambda: hs.zoo.resnet20(2), (1, 8, 8)),
}


def hetero(spec: dict[str, Any]) -> dict[str, Any]:
    """Width-heterogeneous merges at the tutorials' sizes (digits-shaped inputs, 674 calibration images)."""
    baseline = warm_baseline()
    fa, fb, shape = HETERO[spec["pair"]]
    torch.manual_seed(0)
    a, b = fa().eval(), fb().eval()
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(min(128, 674 - i), *shape, generator=gen) for i in range(0, 674, 128)]
    contenders = {m: (lambda m=m: {"stages": dict(hs.merge([a, b], data, method=m, width="max",
                                                           progress=False).report.seconds)})
                  for m in spec["methods"]}
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for i in range(spec["repeats"] + 1):
        for name, fn in contenders.items():
            run = measure(fn)
            if i:
                runs[name].append(run)
    out: dict[str, Any] = {"pair": spec["pair"], "params_mib": param_mib(a, b), "baseline_mib": baseline}
    for name, rs in runs.items():
        m = median(rs)
        out[name] = {"seconds": m.seconds, "peak_mib": m.peak_mib, "stages": m.detail["stages"]}
    return out


def two_passes(fn: Any) -> Any:
    """``fn()`` with the similarity pass and the statistics as two passes over the data (``merging.one_pass`` off):
    the merge before the one pass, measured beside it."""
    from hetsurgery.merging import one_pass

    real = one_pass.possible
    one_pass.possible = lambda *args, **kwargs: False  # type: ignore[assignment]
    try:
        return fn()
    finally:
        one_pass.possible = real


def depth(spec: dict[str, Any]) -> dict[str, Any]:
    """A depth-heterogeneous zip merge (ResNet-20 and ResNet-32 of one width) and its floor after a warm-up, the
    median of ``repeats`` alternating runs each: the forward passes of both models, and the bare LAPs of the
    balanced pair's groups."""
    baseline = warm_baseline()
    torch.manual_seed(0)
    a = hs.zoo.resnet20(spec["width"], in_channels=3).eval()
    b = hs.zoo.resnet32(spec["width"], in_channels=3).eval()
    data = calibration(spec["samples"])
    from hetsurgery.merging import plan_merge
    from hetsurgery.plan.stats import collect_stats

    balanced = plan_merge([a, b], data[:2], method="permute", depth="lma", progress=False).graphs
    stats = collect_stats(balanced, data[:2], full=False, progress=False)
    matrices = [s.block(s.similarity(), 0, 1).numpy() for s in stats.values()]
    taps, dims = site_taps(b, data[0][:2])  # b, the deeper model, is the anchor
    every, every_dims = site_taps(b, data[0][:2], every=True)
    contenders: dict[str, Any] = {
        "forward": lambda: forward_floor(a, b, data),
        "gram": lambda: gram_floor(taps, dims, a, data, cross=False),
        "gram-every": lambda: gram_floor(every, every_dims, a, data, cross=False),
        "lap": lambda: lap_floor(matrices),
        "depth-zip": lambda: {"stages": dict(hs.merge([a, b], data, method="zip", depth="lma",
                                                      progress=False).report.seconds)},
        "depth-zip-two-passes": lambda: two_passes(lambda: {"stages": dict(hs.merge(
            [a, b], data, method="zip", depth="lma", progress=False).report.seconds)}),
    }
    out: dict[str, Any] = {"width": spec["width"], "samples": spec["samples"], "params_mib": param_mib(a, b),
                           "baseline_mib": baseline, "parameters": sum(p.numel() for p in a.parameters()),
                           "parameters_deep": sum(p.numel() for p in b.parameters())}
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    for _ in range(spec["repeats"]):  # alternating, so that a slow spell of the machine hits every contender
        for name, fn in contenders.items():
            runs[name].append(measure(fn))
    for name, rs in runs.items():
        r = median(rs)
        out[name] = {"seconds": r.seconds, "peak_mib": r.peak_mib, "stages": r.detail.get("stages", {})}
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    result = {"weight": weight, "activation": activation, "scaling": scaling, "hetero": hetero,
              "depth": depth}[spec["kind"]](spec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
