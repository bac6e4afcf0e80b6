"""Model assembly on a zoo of 30 MLPs (MAL's experiment, on digits): λ curves, thresholds, and the laws.

Thirty MLP architectures in five categories (constant width, widening, narrowing, bottleneck, deep and
narrow; widths 16-128, 1-4 hidden layers), each trained on one task: digits 0-4, digits 5-9, all digits, or
a synthetic ten-class set on the same 8x8 input space (scikit-learn's ``make_classification``). One model
per category trained on digits 0-4 is a base; every other model of the zoo is a donor. For each base/donor
pair the donor is aligned once (``prepare_donor``: ``lma`` where the depths differ, ``mal`` or ``mal-pad``)
and blended into the first unit only, the last unit only (the head) or all units; ``threshold_along``
finds the largest λ whose base-task accuracy stays within one point of the base, and the donor-task
accuracy is read along the same λ grid. Every threshold is checked again at ten further λ below it, none of
them a point the search evaluated.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

import hetsurgery as hs
from bench.report import RESULTS, machine, write_section
from hetsurgery.assembly.donor import AlignedDonor, prepare_donor
from hetsurgery.assembly.lambda_threshold import (
    RESOLUTION,
    VERIFY,
    blended_model,
    plot_threshold,
    score_at,
    threshold_along,
)
from hetsurgery.demo import calibration_set
from hetsurgery.evaluate import LAMBDAS, task_scores
from hetsurgery.merging.depth_options import DepthOptions
from hetsurgery.zoo.data import digits, loader
from hetsurgery.zoo.train import train

CATEGORIES: dict[str, tuple[tuple[int, ...], ...]] = {
    "constant": ((32,), (64,), (128,), (48, 48), (96, 96), (64, 64, 64)),
    "widening": ((16, 32), (32, 64), (64, 128), (16, 32, 64), (32, 64, 128), (16, 32, 64, 128)),
    "narrowing": ((32, 16), (64, 32), (128, 64), (64, 32, 16), (128, 64, 32), (128, 96, 64, 32)),
    "bottleneck": ((64, 16, 64), (128, 32, 128), (96, 24, 96), (64, 32, 64), (128, 64, 128), (128, 32, 32, 128)),
    "deep and narrow": ((16, 16, 16, 16), (24, 24, 24, 24), (32, 32, 32, 32), (32, 24, 24, 16), (24, 16, 16, 24),
                        (16, 24, 24, 32)),
}
TASK_OF = ("digits 0-4", "digits 5-9", "digits 0-9", "synthetic", "digits 0-4", "digits 5-9")  # by place in category
BASE_TASK = "digits 0-4"  # every model trained on it is a base in turn; every other model is its donor
SETTINGS = (("mal", "first"), ("mal", "last"), ("mal", "all"), ("mal-pad", "all"))
TOLERANCE = 0.01
CHECKS = 10  # further λ below every threshold at which the base task is checked again
SEEDS = (0, 1, 2)
CLASSES = {"digits 0-4": tuple(range(5)), "digits 5-9": tuple(range(5, 10)), "digits 0-9": tuple(range(10)),
           "synthetic": tuple(range(10))}


@dataclass(frozen=True)
class Member:
    name: str
    category: str
    hidden: tuple[int, ...]
    task: str
    model: torch.nn.Module
    seed: int


@dataclass(frozen=True)
class Run:
    """One base/donor pair and one setting: the threshold, its check, and the curves along LAMBDAS (the base
    task's accuracy over all ten classes; the donor task's inside its classes)."""

    seed: int
    base: str
    donor: str
    task: str
    align: str
    units: str
    threshold: float
    barrier: float
    base_curve: tuple[float, ...]
    donor_curve: tuple[float, ...]
    donor_at_threshold: float
    compatible: bool
    same_depth: bool
    objective: tuple[float, float]
    converged: bool | None
    checked: int
    failed: tuple[float, ...]


def synthetic(split: str) -> TensorDataset:
    """Ten classes of 64 features (``make_classification``, fixed seed), standardised, shaped as 8x8 images."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(n_samples=1797, n_features=64, n_informative=24, n_redundant=8, n_classes=10,
                               n_clusters_per_class=2, class_sep=1.5, random_state=0)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = xtr.mean(0), xtr.std(0)
    xs, ys = (xtr, ytr) if split == "train" else (xte, yte)
    return TensorDataset(torch.tensor((xs - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8),
                         torch.tensor(ys, dtype=torch.long))


DATA: dict[str, Callable[[str], TensorDataset]] = {
    "digits 0-4": lambda split: digits(split, range(5)),
    "digits 5-9": lambda split: digits(split, range(5, 10)),
    "digits 0-9": lambda split: digits(split),
    "synthetic": synthetic,
}


def zoo(epochs: int, seed: int) -> list[Member]:
    out = []
    for c, (category, archs) in enumerate(CATEGORIES.items()):
        for i, hidden in enumerate(archs):
            task, at = TASK_OF[i], 1000 * seed + 100 * c + i
            torch.manual_seed(at)
            model = train(hs.zoo.mlp(list(hidden)), DATA[task]("train"), epochs=epochs, seed=at)
            out.append(Member(f"{'-'.join(map(str, hidden))} ({category})", category, hidden, task, model, seed))
    return out


def run_pair(base: Member, donor: Member, tests: Mapping[str, list], calib: list) -> list[Run]:
    g = hs.trace(base.model, calib[0][:2], name="base")
    keys = [u.key for u in g.units]
    selections = {"first": [keys[0]], "last": [keys[-1]], "all": keys}
    depth = DepthOptions.of("lma", "add", "cka", "sign_of_sum")
    runs = []
    for align in ("mal", "mal-pad"):
        ready = prepare_donor(g, donor.model, calib, name=donor.name, align=align, depth=depth, progress=False)
        for units in (u for a, u in SETTINGS if a == align):
            runs.append(_setting(ready, base, donor, align, units, selections[units], tests))
    return runs


def _setting(ready: AlignedDonor, base: Member, donor: Member, align: str, units: str, keys: Sequence[str],
             tests: Mapping[str, list]) -> Run:
    test, other = tests[base.task], tests[donor.task]
    t = threshold_along(ready, keys, test, tolerance=TOLERANCE, bn_samples=None)

    def donor_task(lam: float) -> float:
        return task_scores(blended_model(ready, keys, lam), other, [CLASSES[donor.task]]).per_task[0]

    checks = [t.threshold * (i + 0.5) / CHECKS for i in range(CHECKS)] if t.threshold > 0 else []
    failed = tuple(lam for lam in checks if not t.within(score_at(ready, keys, lam, test)[1]))
    records = t.units
    conv = [r.converged for r in records]
    return Run(base.seed, base.name, donor.name, donor.task, align, units, t.threshold, t.barrier, t.curve.accuracy,
               tuple(donor_task(lam) for lam in LAMBDAS), donor_task(t.threshold),
               all(r.size_compatible for r in records),
               len(base.hidden) == len(donor.hidden),
               (sum(r.objective_before or 0.0 for r in records), sum(r.objective_after or 0.0 for r in records)),
               None if any(c is None for c in conv) else all(conv), len(checks), failed)


# -- tables and laws ---------------------------------------------------------------------------------------

def _per_seed(runs: Iterable[Run], f: Callable[[Run], float]) -> list[float]:
    """The mean of ``f`` over each seed's runs."""
    by: dict[int, list[float]] = {}
    for r in runs:
        by.setdefault(r.seed, []).append(f(r))
    return [statistics.mean(v) for _, v in sorted(by.items())]


def _m(runs: Iterable[Run], f: Callable[[Run], float]) -> float:
    v = _per_seed(runs, f)
    return statistics.mean(v) if v else float("nan")


def _mean(runs: Iterable[Run], f: Callable[[Run], float], scale: float = 1.0, digits: int = 2) -> str:
    """Mean ± std over seeds of the per-seed means."""
    v = [scale * x for x in _per_seed(runs, f)]
    if not v:
        return "–"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.{digits}f} ± {sd:.{digits}f}"


def _pct(runs: Iterable[Run], f: Callable[[Run], float]) -> str:
    return _mean(runs, f, 100.0, 1)


def _at(curve: Sequence[float], lam: float) -> float:
    return curve[LAMBDAS.index(lam)]


def group_table(groups: Mapping[str, list[Run]]) -> list[str]:
    lines = ["| runs | n | threshold λ* | base task at λ=0 | at λ=0.5 | at λ=1 | donor task at λ=0 | at λ* | at λ=0.5 "
             "| at λ=1 | loss barrier |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        lines.append(
            f"| {name} | {len(runs)} | {_mean(runs, lambda r: r.threshold)} | {_pct(runs, lambda r: r.base_curve[0])} | "
            f"{_pct(runs, lambda r: _at(r.base_curve, 0.5))} | {_pct(runs, lambda r: r.base_curve[-1])} | "
            f"{_pct(runs, lambda r: r.donor_curve[0])} | {_pct(runs, lambda r: r.donor_at_threshold)} | "
            f"{_pct(runs, lambda r: _at(r.donor_curve, 0.5))} | {_pct(runs, lambda r: r.donor_curve[-1])} | "
            f"{_mean(runs, lambda r: r.barrier)} |")
    return lines


def law_groups(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    mal = [r for r in runs if r.align == "mal"]
    single = [r for r in mal if r.units != "all"]
    paired = {_pair(r) for r in runs if r.align == "mal-pad" and not r.compatible}
    return {
        "first unit only vs last unit only vs all units (mal)": {
            f"{u} ({task})": [r for r in mal if r.units == u and r.task == task]
            for u in ("first", "last", "all") for task in DATA} | {
            f"{u} (every donor)": [r for r in mal if r.units == u] for u in ("first", "last", "all")},
        "size-compatible vs size-incompatible units (mal, first or last unit alone)": {
            f"{u} unit, {'size-compatible' if c else 'size-incompatible'}": [r for r in single
                                                                           if r.units == u and r.compatible == c]
            for u in ("first", "last") for c in (True, False)},
        "zero padding only (mal-pad) vs bidirectional alternation (mal), all units, size-incompatible pairs": {
            a: [r for r in runs if r.align == a and r.units == "all" and _pair(r) in paired]
            for a in ("mal-pad", "mal")},
        "same depth vs different depth (through the depth plan), mal, all units": {
            "same depth": [r for r in mal if r.units == "all" and r.same_depth],
            "different depth (LMA)": [r for r in mal if r.units == "all" and not r.same_depth]},
    }


def laws_text(groups: Mapping[str, Mapping[str, list[Run]]], runs: list[Run]) -> str:
    m = _m
    g = list(groups.values())
    first, last, every = (g[0][f"{u} (every donor)"] for u in ("first", "last", "all"))
    comp = [r for k, rs in g[1].items() if "size-compatible" in k for r in rs]
    incomp = [r for k, rs in g[1].items() if "size-incompatible" in k for r in rs]
    split = {k: m(rs, lambda r: r.threshold) for k, rs in g[1].items()}
    pad, mal = g[2]["mal-pad"], g[2]["mal"]
    same, diff = g[3].values()
    wins = sum(a.threshold >= b.threshold for a, b in zip(sorted(mal, key=_pair), sorted(pad, key=_pair), strict=True))
    gain = m(mal, lambda r: r.objective[1] - r.objective[0]), m(pad, lambda r: r.objective[1] - r.objective[0])
    conv = [r.converged for r in runs if r.align == "mal" and r.converged is not None]
    return "\n".join([
        f"- **Which units.** Mean threshold λ*: first unit only {m(first, lambda r: r.threshold):.2f}, last unit only "
        f"{m(last, lambda r: r.threshold):.2f}, all units {m(every, lambda r: r.threshold):.2f}; base-task accuracy at "
        f"λ = 0.5: {100 * m(first, lambda r: _at(r.base_curve, 0.5)):.1f} / "
        f"{100 * m(last, lambda r: _at(r.base_curve, 0.5)):.1f} / {100 * m(every, lambda r: _at(r.base_curve, 0.5)):.1f} "
        f"%; donor-task accuracy at λ*: {100 * m(first, lambda r: r.donor_at_threshold):.1f} / "
        f"{100 * m(last, lambda r: r.donor_at_threshold):.1f} / {100 * m(every, lambda r: r.donor_at_threshold):.1f} % "
        f"(at λ = 0: {100 * m(every, lambda r: r.donor_curve[0]):.1f} %).",
        f"- **Size compatibility.** A single unit whose widths equal the base's: λ* {m(comp, lambda r: r.threshold):.2f} "
        f"({len(comp)} runs); one whose widths differ: {m(incomp, lambda r: r.threshold):.2f} ({len(incomp)} runs); "
        "by unit: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items()) + ".",
        f"- **Alignment.** All units of size-incompatible pairs: λ* {m(mal, lambda r: r.threshold):.2f} with the "
        f"alternation (mal) against {m(pad, lambda r: r.threshold):.2f} with zero padding and one LAP per group "
        f"(mal-pad); mal's λ* ≥ mal-pad's in {wins} of {len(mal)} pairs; the objective Σ⟨W_base, W_donor⟩ over the "
        f"blended units rises by {gain[0]:.1f} (mal) against {gain[1]:.1f} (mal-pad) over no alignment; loss barrier "
        f"{m(mal, lambda r: r.barrier):.2f} against {m(pad, lambda r: r.barrier):.2f}; the alternation converged in "
        f"{sum(bool(c) for c in conv)} of {len(conv)} runs.",
        f"- **Depth.** All units: λ* {m(same, lambda r: r.threshold):.2f} for donors of the base's depth "
        f"({len(same)} runs), {m(diff, lambda r: r.threshold):.2f} for donors of another depth balanced by the LMA "
        f"depth plan ({len(diff)} runs); base-task accuracy at λ = 0.5: {100 * m(same, lambda r: _at(r.base_curve, 0.5)):.1f} "
        f"against {100 * m(diff, lambda r: _at(r.base_curve, 0.5)):.1f} %; donor-task accuracy at λ = 1: "
        f"{100 * m(same, lambda r: r.donor_curve[-1]):.1f} against {100 * m(diff, lambda r: r.donor_curve[-1]):.1f} % "
        "(a fused or skipped donor layer is not the donor's own).",
    ])


def _pair(r: Run) -> tuple[int, str, str]:
    return r.seed, r.base, r.donor


def plot_laws(groups: Mapping[str, Mapping[str, list[Run]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, *rest = groups.values()
    picked = [{k: v for k, v in first.items() if "every donor" in k}, *rest]
    titles = ["which units (mal)", "size compatibility (one unit, mal)", "mal-pad vs mal (all units)",
              "depth (all units, mal)"]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), sharex=True)
    for col, (title, group) in enumerate(zip(titles, picked, strict=True)):
        for name, runs in group.items():
            if not runs:
                continue
            for row, curve in enumerate((lambda r: r.base_curve, lambda r: r.donor_curve)):
                mean = [statistics.mean(curve(r)[i] for r in runs) for i in range(len(LAMBDAS))]
                axes[row, col].plot(LAMBDAS, mean, marker=".", label=f"{name.removesuffix(' (every donor)')} ({len(runs)})")
        axes[0, col].set(title=title, ylabel="base task accuracy" if col == 0 else None)
        axes[1, col].set(xlabel="λ", ylabel="donor task accuracy" if col == 0 else None)
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pair_table(runs: list[Run], base: str, donor: str) -> list[str]:
    lams = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    lines = [f"Base {base}, donor {donor} (seed {SEEDS[0]}): base-task / donor-task accuracy (%) against λ", "",
             "| units (align) | λ* | " + " | ".join(f"λ={x:g}" for x in lams) + " |", "|---|---|" + "---|" * len(lams)]
    for r in (r for r in runs if r.base == base and r.donor == donor and r.seed == SEEDS[0]):
        cells = " | ".join(f"{100 * _at(r.base_curve, x):.0f} / {100 * _at(r.donor_curve, x):.0f}" for x in lams)
        lines.append(f"| {r.units} ({r.align}) | {r.threshold:.2f} | {cells} |")
    return lines


def main(epochs: int = 20) -> str:
    torch.set_num_threads(1)  # tiny MLPs: one thread each is faster than two fighting over the cores
    clock = time.perf_counter()
    tests = {task: list(loader(make("test"), 512)) for task, make in DATA.items()}
    calib = [x for x, _ in loader(calibration_set(), 128)]
    runs: list[Run] = []
    zoos = []
    for seed in SEEDS:
        print(f"assembly: training the zoo (30 MLPs), seed {seed}", flush=True)
        members = zoo(epochs, seed)
        zoos.append(members)
        for base in (m for m in members if m.task == BASE_TASK):
            for donor in (m for m in members if m is not base):
                runs += run_pair(base, donor, tests, calib)
        print(f"  seed {seed}: {len(runs)} runs, {time.perf_counter() - clock:.0f}s", flush=True)
    groups = law_groups(runs)
    plot_laws(groups, str(RESULTS / "assembly.png"))
    base = next(m for m in zoos[0] if m.task == BASE_TASK and m.hidden == (96, 96))
    donor = next(m for m in zoos[0] if m.task == "digits 5-9" and m.hidden == (64, 64, 64))
    _example_plot(base, donor, tests, calib)
    text = report(zoos, runs, groups, (base, donor), time.perf_counter() - clock, epochs)
    write_section("assembly", text)
    return text


def _example_plot(base: Member, donor: Member, tests: Mapping[str, list], calib: list) -> None:
    t = hs.find_lambda_threshold(base.model, donor.model, tests[base.task], layers="all", calibration=calib,
                                 depth="lma")
    plot_threshold(t, RESULTS / "assembly_threshold.png", title=f"base {base.name}, donor {donor.name}")


def report(zoos: list[list[Member]], runs: list[Run], groups: Mapping[str, Mapping[str, list[Run]]],
           example: tuple[Member, Member], seconds: float, epochs: int) -> str:
    zoo_rows = [f"| {c} | " + " | ".join(f"{'-'.join(map(str, h))} ({TASK_OF[i]}, {_own_pct(zoos, c, h)})"
                                         for i, h in enumerate(archs)) + " |" for c, archs in CATEGORIES.items()]
    checked = [r for r in runs if r.checked]
    bad = [r for r in runs if r.failed]
    n_bases = sum(m.task == BASE_TASK for m in zoos[0])
    parts = ["## Model assembly: an MLP zoo absorbed unit by unit", "",
             f"Thirty MLPs (ReLU, no BatchNorm) in five categories, each trained for {epochs} epochs (Adam) on one task: "
             "digits 0-4, digits 5-9, all digits, or a synthetic ten-class set on the same 8x8 input space "
             "(scikit-learn's `make_classification`, 24 informative features); the whole zoo is trained again for each "
             f"seed ({', '.join(map(str, SEEDS))}). Architectures (hidden widths), tasks, and test accuracy on the own "
             "task (mean over seeds):", "",
             "| category | " + " | ".join(f"model {i}" for i in range(6)) + " |", "|---|" + "---|" * 6, *zoo_rows, "",
             f"Bases: the {n_bases} models trained on digits 0-4. Donors: the other 29 models of the same seed (29 "
             f"donors per base, {len(runs) // len(SETTINGS)} base/donor pairs over the seeds). For each pair the "
             "donor is aligned once per method (`prepare_donor`: where the depths differ, the LMA depth plan on "
             "linear CKA with the base as anchor, a deeper donor's layers fused across their ReLUs, a shallower "
             "donor's missing layers leaving those base layers alone; then `mal` or `mal-pad` onto the base's "
             "widths), and blended into the first unit only (the first hidden layer), the last unit only (the head) "
             "or every unit with one λ. The threshold λ* is the largest λ whose base-task accuracy (argmax over all "
             f"ten classes, on the digits 0-4 test images) stays within {100 * TOLERANCE:.0f} point of the base at "
             "every grid point λ ∈ {0, 0.05, …, 1} below it, refined by 6 bisection steps, then verified at points "
             f"at most {RESOLUTION} apart below it (at least {VERIFY}) and bisected again where one falls outside "
             "(`threshold_along`). "
             "Donor-task accuracy: the donor task's test set, argmax inside its classes (digits 5-9: five classes; "
             "all digits and synthetic: ten). Calibration: 674 training digits. Tables: mean ± std over the "
             "three seeds of the mean over runs; *n* counts the runs.", "",
             f"**Self-check.** Every threshold was checked again at {CHECKS} further λ spread below it, none of them "
             "a point the search evaluated: "
             + (f"the base task stays within {100 * TOLERANCE:.0f} point of the base model for every λ checked below "
                f"the reported threshold in all {len(checked)} runs with λ* > 0 (the {len(runs) - len(checked)} "
                "others have λ* = 0)." if not bad else
                f"in {len(checked) - len(bad)} of the {len(checked)} runs with λ* > 0 the base task stays within "
                f"{100 * TOLERANCE:.0f} point of the base model for every λ checked below the reported threshold; "
                f"in {len(bad)} it does not (the search sees only the λ it evaluates): "
                + "; ".join(f"seed {r.seed} {r.base} / {r.donor} ({r.units}, {r.align}) λ* {r.threshold:.3f}, "
                            "fails at " + ", ".join(f"{x:.3f}" for x in r.failed) for r in bad[:6])
                + ("; …" if len(bad) > 6 else "") + "."), "",
             "### The laws we measured", "", laws_text(groups, runs), "",
             "![mean base-task and donor-task accuracy against λ](bench/results/assembly.png)", ""]
    for title, group in groups.items():
        parts += [f"### {title[0].upper()}{title[1:]}", "", *group_table(group), ""]
    parts += ["### λ curves of single pairs", ""]
    base = example[0].name
    for donor in ("64-32 (narrowing)", "64-64-64 (constant)", "128-64 (narrowing)", "48-48 (constant)",
                  "128-64-32 (narrowing)"):
        parts += [*pair_table(runs, base, donor), ""]
    parts += [f"`find_lambda_threshold` on one pair (seed {SEEDS[0]}: base {example[0].name}, donor {example[1].name} "
              "on digits 5-9, all units, depth LMA, mal):", "", "![threshold picture](bench/results/assembly_threshold.png)",
              "", f"{len(runs)} runs in {seconds / 60:.1f} minutes (training included). Command: "
              f"`python -m bench assembly`. Machine: {machine()}."]
    return "\n".join(parts)


def _own_pct(zoos: list[list[Member]], category: str, hidden: tuple[int, ...]) -> str:
    from hetsurgery.evaluate import accuracy

    models = [m for members in zoos for m in members if m.category == category and m.hidden == hidden]
    return f"{100 * statistics.mean(accuracy(m.model, loader(DATA[m.task]('test'), 512)) for m in models):.1f} %"
