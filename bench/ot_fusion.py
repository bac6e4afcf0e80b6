"""OT fusion against the papers: CLAFusion's MLP ablation (its Table 10) on digits, equal widths, unequal widths.

(a) CLAFusion's protocol: bias-free MLPs A 400-200-100-50-25 and B 400-200-100, both trained on all ten
    classes, merged with the cross-layer alignment (``depth="cla", balance="add"``) by OT, zip and MAL;
(b) two bias-free MLPs of equal widths (400-200-100, different seeds): OT with uniform marginals on equal
    widths is a permutation, so ``ot`` and ``permute`` differ only by their ground metric (euclidean distance
    against correlation); how many neurons they match alike;
(c) two bias-free MLPs of equal depth and different widths (64-64 and 128-96);
(d) what OT's coupling needs: the number of calibration samples, the exact solver against Sinkhorn.

Accuracy is over all ten classes (both models solve the whole task, as in CLAFusion), mean ± std over seeds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import hetsurgery as hs
from bench.report import RESULTS, machine, write_section
from hetsurgery.demo import calibration_set
from hetsurgery.evaluate import Ensemble, accuracy
from hetsurgery.plan.width_plan import MatchKind
from hetsurgery.zoo.data import digits, loader
from hetsurgery.zoo.train import train

DEEP, SHALLOW = (400, 200, 100, 50, 25), (400, 200, 100)  # CLAFusion's models A and B (Appendix C.1)
EQUAL = (400, 200, 100)
NARROW, WIDE = (64, 64), (128, 96)
CLA = {"depth": "cla", "balance": "add"}

Run = tuple[str, str, dict]  # label, method, options of hs.merge
TABLE_TEN: list[Run] = [  # each run with balance="add" (identity layers into B) and "merge" (A's layers fused)
    ("zip (default: widest widths)", "zip", {}),
    ("zip at A's widths (`width=0`)", "zip", {"width": 0}),
    ("ot (default: widest widths, CLAFusion's)", "ot", {}),
    ("ot at A's widths (`width=0`)", "ot", {"width": 0}),
    ("ot, OTFusion's balanced marginals (`marginals=\"balanced\"`)", "ot", {"marginals": "balanced"}),
    ("ot, weights cost", "ot", {"cost": "weights"}),
    ("ot, weights cost, `width=0`", "ot", {"cost": "weights", "width": 0}),
    ("mal (`width=\"max\"`)", "mal", {"width": "max"}),
]
BALANCES = ("add", "merge")
EQUAL_RUNS: list[Run] = [("average", "average", {}), ("permute", "permute", {}), ("ot", "ot", {}),
                         ("ot, weights cost", "ot", {"cost": "weights"}), ("zip", "zip", {})]
WIDTH_RUNS: list[Run] = [
    ("zip (default: widest)", "zip", {}), ("zip at A's widths (`width=0`)", "zip", {"width": 0}),
    ("ot (default: widest)", "ot", {}), ("ot at A's widths (`width=0`)", "ot", {"width": 0}),
    ("ot, balanced marginals (`marginals=\"balanced\"`)", "ot", {"marginals": "balanced"}),
    ("ot, weights cost", "ot", {"cost": "weights"}),
    ("mal (`width=\"max\"`)", "mal", {"width": "max"}),
]
SAMPLES = (64, 200, None)  # calibration images for the coupling (None: all 674)


class BiasFreeMLP(nn.Module):
    """CLAFusion's ``MLPNet``: Linear(bias=False)-ReLU hidden layers and a bias-free linear head."""

    def __init__(self, hidden: Sequence[int], in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for w in hidden:
            layers += [nn.Linear(prev, w, bias=False), nn.ReLU()]
            prev = w
        layers.append(nn.Linear(prev, num_classes, bias=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


def trained(hidden: Sequence[int], seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)
    return train(BiasFreeMLP(hidden), digits("train"), epochs=epochs, seed=seed)


def _fmt(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def _mean(values: Iterable[float]) -> float:
    return statistics.mean(values)


def fan_in(result: hs.MergeResult) -> int:
    """The most neurons of one model that an OT group ties to a single neuron of the other: averaged into one
    merged neuron, or one neuron spread over that many merged neurons (1: a permutation)."""
    most = 1
    for m in result.plan.groups.values():
        if m.kind is MatchKind.OT:
            nonzero = [(mk != 0) for mk in m.merge]
            most = max(most, *(int(nz.sum(1).max()) for nz in nonzero), *(int(nz.sum(0).max()) for nz in nonzero))
    return most


def agreement(ot: hs.MergeResult, permute: hs.MergeResult) -> tuple[int, int, bool]:
    """Hidden neurons that ``ot`` and ``permute`` match alike, out of all, and whether every OT coupling was a
    permutation (each merged neuron fed by one neuron of each model)."""
    same = total = 0
    perm = True
    for gid, pm in permute.plan.groups.items():
        om = ot.plan.groups[gid]
        if pm.perms is None or om.kind is not MatchKind.OT:
            continue
        m = om.merge[1]
        perm = perm and bool(((m != 0).sum(1) == 1).all())
        same += int((m.argmax(1) == pm.perms[1]).sum())
        total += m.shape[0]
    return same, total, perm


def merged(models: Sequence[nn.Module], data: DataLoader, test: DataLoader, method: str, options: dict
           ) -> tuple[float | str, float, hs.MergeResult | None]:
    """Accuracy, seconds and the result of one merge, or the refusal's message in place of the accuracy."""
    clock = time.perf_counter()
    try:
        r = hs.merge(list(models), data, method=method, progress=False, **options)
    except hs.MergeError as exc:
        return f"refused: {str(exc).split(':')[-1].strip()}", 0.0, None
    return accuracy(r.model, test), time.perf_counter() - clock, r


def _cell(values: list) -> str:
    """mean ± std of accuracies, or the first refusal among them."""
    refusals = [v for v in values if isinstance(v, str)]
    return refusals[0] if refusals else _fmt(values)


def _rows(cells: dict[str, list], extra: dict[str, list[int]] | None = None) -> list[str]:
    lines = []
    for label, values in cells.items():
        more = "" if extra is None else f" | {max(extra[label]) if label in extra else ''}"
        lines.append(f"| {label} | {_cell(values)}{more} |")
    return lines


def table_ten(seeds: Sequence[int], epochs: int) -> tuple[str, dict[str, list]]:
    """Rows: the parents and the ensemble, then every run of ``TABLE_TEN``; columns: ``balance="add"`` and
    ``balance="merge"`` (``cells`` keyed ``"label | balance"``), each with its largest OT cluster."""
    test, calib = loader(digits("test")), loader(calibration_set(), 128)
    cells: dict[str, list] = {}
    fans: dict[str, list[int]] = {}
    for seed in seeds:
        a, b = trained(DEEP, 1000 * seed, epochs), trained(SHALLOW, 1000 * seed + 1, epochs)
        for label, model in (("model A (400-200-100-50-25)", a), ("model B (400-200-100)", b),
                             ("ensemble A + B", Ensemble([a, b]))):
            cells.setdefault(label, []).append(accuracy(model, test))
        for label, method, options in TABLE_TEN:
            for balance in BALANCES:
                key = f"{label} | {balance}"
                acc, _, r = merged([a, b], calib, test, method, {"depth": "cla", "balance": balance, **options})
                cells.setdefault(key, []).append(acc)
                if r is not None and method == "ot":
                    fans.setdefault(key, []).append(fan_in(r))
        print(f"  ot_fusion (a) seed {seed}: " + "  ".join(
            f"{k.split(' (')[0]}{k.split(' | ')[1] if ' | ' in k else ''} {v[-1]:.3f}" for k, v in cells.items()
            if isinstance(v[-1], float)), flush=True)
    lines = ["| model | `balance=\"add\"` | largest OT cluster | `balance=\"merge\"` | largest OT cluster |",
             "|---|---|---|---|---|"]
    for label in ("model A (400-200-100-50-25)", "model B (400-200-100)", "ensemble A + B"):
        lines.append(f"| {label} | {_cell(cells[label])} | | | |")
    for label, *_ in TABLE_TEN:
        row = [f"| {label} "]
        for balance in BALANCES:
            key = f"{label} | {balance}"
            row.append(f"| {_cell(cells[key])} | {max(fans[key]) if key in fans else ''} ")
        lines.append("".join(row) + "|")
    return "\n".join(lines), cells


def equal_widths(seeds: Sequence[int], epochs: int) -> str:
    test, calib = loader(digits("test")), loader(calibration_set(), 128)
    cells: dict[str, list] = {}
    agree: list[tuple[int, int, bool]] = []
    for seed in seeds:
        a, b = trained(EQUAL, 1000 * seed + 1, epochs), trained(EQUAL, 1000 * seed + 2, epochs)
        for label, model in (("model A", a), ("model B", b), ("ensemble", Ensemble([a, b]))):
            cells.setdefault(label, []).append(accuracy(model, test))
        results = {}
        for label, method, options in EQUAL_RUNS:
            acc, _, results[label] = merged([a, b], calib, test, method, options)
            cells.setdefault(label, []).append(acc)
        ot_r, perm_r = results["ot"], results["permute"]
        assert ot_r is not None and perm_r is not None
        agree.append(agreement(ot_r, perm_r))
        print(f"  ot_fusion (b) seed {seed}: ot {cells['ot'][-1]:.3f} permute {cells['permute'][-1]:.3f} "
              f"agree {agree[-1][0]}/{agree[-1][1]}", flush=True)
    gaps = [o - p for o, p in zip(cells["ot"], cells["permute"], strict=True)]
    same = [s / t for s, t, _ in agree]
    return "\n".join([
        "| model | accuracy |", "|---|---|", *_rows(cells), "",
        f"Every OT coupling a permutation: {'yes' if all(p for *_, p in agree) else 'no'} (each merged neuron fed by "
        f"exactly one neuron of each model). Hidden neurons that ot and permute match alike: {_fmt(same)} % "
        f"({', '.join(f'{s}/{t}' for s, t, _ in agree)}); ot − permute: {_fmt(gaps)} points "
        f"(per seed {', '.join(f'{100 * g:+.1f}' for g in gaps)}).",
    ])


def width_pair(seeds: Sequence[int], epochs: int) -> str:
    test, calib = loader(digits("test")), loader(calibration_set(), 128)
    cells: dict[str, list] = {}
    for seed in seeds:
        a, b = trained(NARROW, 1000 * seed + 3, epochs), trained(WIDE, 1000 * seed + 4, epochs)
        for label, model in (("model A (64-64)", a), ("model B (128-96)", b), ("ensemble", Ensemble([a, b]))):
            cells.setdefault(label, []).append(accuracy(model, test))
        for label, method, options in WIDTH_RUNS:
            cells.setdefault(label, []).append(merged([a, b], calib, test, method, options)[0])
        print(f"  ot_fusion (c) seed {seed} done", flush=True)
    return "\n".join(["| model | accuracy |", "|---|---|", *_rows(cells)])


def coupling_needs(seeds: Sequence[int], epochs: int) -> str:
    """ot on the Table 10 pair with fewer calibration samples, and with Sinkhorn."""
    test, images = loader(digits("test")), calibration_set()
    runs: list[tuple[str, Callable[[], DataLoader], dict]] = []
    for n in SAMPLES:
        data = (lambda n=n: loader(Subset(images, range(n)), 128)) if n else (lambda: loader(images, 128))
        runs.append((f"{n or len(images)} samples, emd", data, {}))
    runs.append((f"{len(images)} samples, sinkhorn (reg 0.01, cost / max)", lambda: loader(images, 128),
                 {"solver": "sinkhorn"}))
    cells: dict[str, dict[str, list]] = {"default (widest widths)": {}, "A's widths (`width=0`)": {}}
    for seed in seeds:
        a, b = trained(DEEP, 1000 * seed, epochs), trained(SHALLOW, 1000 * seed + 1, epochs)
        for label, data, options in runs:
            for col, width in (("default (widest widths)", {}), ("A's widths (`width=0`)", {"width": 0})):
                acc = merged([a, b], data(), test, "ot", {**CLA, **options, **width})[0]
                cells[col].setdefault(label, []).append(acc)
        print(f"  ot_fusion (d) seed {seed} done", flush=True)
    cols = list(cells)
    lines = ["| coupling from | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, *_ in runs:
        lines.append(f"| {label} | " + " | ".join(_fmt(cells[c][label]) for c in cols) + " |")
    return "\n".join(lines)


def _target(cells: dict[str, list]) -> str:
    """ot against zip at the same widths: both defaults (the widest), and both at A's widths."""
    out = []
    for balance in BALANCES:
        for ot_label, zip_label in ((TABLE_TEN[2][0], TABLE_TEN[0][0]), (TABLE_TEN[3][0], TABLE_TEN[1][0])):
            zip_acc = _mean(cells[f"{zip_label} | {balance}"])
            values = cells[f"{ot_label} | {balance}"]
            if any(isinstance(v, str) for v in values):
                out.append(f"{ot_label}, {balance}: refused (missed)")
                continue
            gap = _mean(values) - zip_acc
            out.append(f"{ot_label}, `{balance}`: {100 * gap:+.1f} points against {zip_label.split(' (')[0]}, "
                       f"{100 * zip_acc:.1f} ({'met' if gap >= -0.02 else 'missed'})")
    return "; ".join(out)


PARTS_ENV = "OT_FUSION_PARTS"  # "a": run (a) alone, keeping (b)-(d) of the last full run in ot_fusion.md


def section_a(ten: str, cells: dict[str, list]) -> str:
    """Section (a): CLAFusion's MLP ablation, both balances."""
    return "\n".join([
        "### (a) CLAFusion's MLP ablation (Table 10, mapping [1, 2, 5], adding or merging layers)",
        "",
        "Five seeds, as CLAFusion. "
        "Model A 400-200-100-50-25, model B 400-200-100 (CLAFusion's widths on MNIST), `depth=\"cla\"`. With "
        "`balance=\"add\"` B gets identity layers after its second layer; with `balance=\"merge\"` A's last three "
        "layers are fused into one across their ReLUs (CLAFusion's \"merge layers\", sign-of-sum estimator), the "
        "bias-free layers staying bias-free (before commit 50ec968 the fused layer gained a bias and the merge "
        "was refused: \"the units do not compute the same kind of thing\"). CLAFusion fuses onto the balanced "
        "B's widths (400-200-200-200-100, the widest here), and so does hetsurgery's `ot` unless told (`width=`). CLAFusion "
        "reports 92.49 ± 2.64 for its OT fusion (parents 96.95 and 97.75) on MNIST; the issue's bar: ot within 2 "
        "points of zip. The cluster columns give the largest OT cluster: the most neurons of one model that a coupling "
        "ties to a single neuron of the other (averaged into one merged neuron, or one neuron spread over them). "
        "Before OT used uniform marginals on unequal widths (commit 623d9e4, seeds 0-2, same command) it solved a "
        "covering assignment: ot 83.6 ± 6.8 (largest cluster 149), onto the widest widths 91.9 ± 0.9, with the "
        "weights cost 80.3 ± 6.3 and 86.8 ± 1.9.",
        "",
        ten,
        "",
        f"Target (ot within 2 points of zip, per balance): {_target(cells)}.",
        "",
        "What closed the gap: the partial transport of a narrower model (`hetsurgery/plan/solvers/ot.py`, "
        "departure 5). With `add`, B's two identity layers (400-200-[200-200]-100) meet A's 100- and 50-wide "
        "layers. OTFusion's balanced marginals send mass to every target neuron, so each of B's 200 neurons there "
        "became half its own feature and half a copy of one of A's (each A neuron copied to two or four of B's, "
        "up to 8-11 where the coupling was uneven); zip at the same widths merges only as many pairs as the widths "
        "drop (100 of 300 features, then 50 of 250) and keeps the rest as they were. Carried partially, each of "
        "A's neurons lands on the one of B's it resembles and B's others stay whole: the balanced row above is "
        "the transport before (commit 9b8aa1e: 94.8 ± 1.1 with `add`, 95.5 ± 0.7 with `merge`, onto the widest). "
        "Onto A's widths the wider B is averaged into A's neurons as before (a partial transport there would drop "
        "B's surplus neurons: 86.5 against 92.0 with `add`, measured once). What did not close it before (seeds "
        "0-2, measured with a patched cost): the correlation distance `sqrt(2 (1 - ρ))` instead of the euclidean "
        "one (onto the widest, `add`: 94.2 against 94.6; `merge`: 95.5 against 95.9); the ground metric on "
        "pre-activations and OTFusion's outgoing factor gained at most 0.8 (95.6 and 95.2 against 94.8).",
    ])


def main(seeds: Sequence[int] = (0, 1, 2), epochs: int = 15, table_ten_seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> str:
    print("ot_fusion: (a) CLAFusion Table 10 analogue", flush=True)
    ten, cells = table_ten(table_ten_seeds, epochs)
    if os.environ.get(PARTS_ENV) == "a":  # (a) alone: the rest of the last full run stays, said so
        old = (RESULTS / "ot_fusion.md").read_text()
        at, end = old.index("### (a)"), old.index("### (b)")
        text = (old[:at] + section_a(ten, cells) + "\n\n" +
                f"Section (a) command: `{PARTS_ENV}=a python -m bench ot_fusion`. Machine: {machine()}. Sections "
                "(b)-(d) are from the last full run (its command and machine below).\n\n" + old[end:])
        write_section("ot_fusion", text)
        return text
    print("ot_fusion: (b) equal widths", flush=True)
    equal = equal_widths(seeds, epochs)
    print("ot_fusion: (c) unequal widths", flush=True)
    widths = width_pair(seeds, epochs)
    print("ot_fusion: (d) what the coupling needs", flush=True)
    needs = coupling_needs(seeds, epochs)
    seeds_text = ", ".join(map(str, seeds))
    text = "\n".join([
        "## OT fusion against the papers (OTFusion, CLAFusion)",
        "",
        "Bias-free MLPs (CLAFusion's `MLPNet`: Linear(bias=False)-ReLU layers, a bias-free head) trained on all ten "
        f"classes of the 8x8 digits ({epochs} epochs, Adam; seeds {seeds_text}, in (a) "
        f"{', '.join(map(str, table_ten_seeds))}); accuracy over all ten classes on the "
        "450 test images, mean ± std over seeds, in percent. Calibration: the 674 unlabeled training images of the "
        "other sections. `ot` is the exact solver (`ot.emd`) on the euclidean distance of activations, onto the "
        "widest widths, a narrower model carried partially (`ot.partial`), unless said otherwise; its formulation "
        "is in `hetsurgery/plan/solvers/ot.py`.",
        "",
        section_a(ten, cells),
        "",
        "### (b) Equal widths: ot against permute (400-200-100, two seeds)",
        "",
        equal,
        "",
        "### (c) Equal depth, different widths: MLP 64-64 (A) and 128-96 (B)",
        "",
        widths,
        "",
        "### (d) What the coupling needs (the pair of (a), `depth=\"cla\"`)",
        "",
        needs,
        "",
        f"Command: `python -m bench ot_fusion`. Machine: {machine()}.",
    ])
    write_section("ot_fusion", text)
    return text
