"""Partial zipping (ZipIt!'s "zip up to a layer") on the depth section's pairs: size and accuracy at every cut.

The deep model A (task A) and the shallow model B (task B) of each pair in ``bench.depth.PAIRS`` (ResNet-32 /
ResNet-20, VGG 3 / 2 convs per stage) are merged by LMA + zip with ``stop_at=k`` for every cut k from 0 (nothing
merged: the output ensemble) to the number of units (everything: the full merge). Each cut's row: the units merged
(the last one named), the parameters of the partially zipped model (trunk, both tails and the unmerge layers)
against the two models together, joint and per-task accuracy, mean ± std over seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import hetsurgery as hs
from bench.accuracy import train_pair_two
from bench.depth import PAIRS
from bench.report import machine, write_section
from hetsurgery.demo import calibration_set
from hetsurgery.evaluate import Ensemble, TaskScores, task_scores
from hetsurgery.zoo.data import TASKS, digits, loader

CUT_PAIRS = ("ResNet-32 / ResNet-20", "VGG 3 / 2 convs per stage")
DEPTH = "lma"
TOLERANCE = 0.03  # the target: joint accuracy within 3 points of the ensemble at the best cut


def _fmt(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


@dataclass
class Cut:
    """One cut point over the seeds: units merged, the last one, the model's parameters, the scores per seed."""

    k: int
    last: str
    params: int
    scores: list[TaskScores] = field(default_factory=list)

    @property
    def joint(self) -> float:
        return statistics.mean(s.joint for s in self.scores)


def curve(pair: str, seeds: Sequence[int], epochs: int) -> tuple[list[str], str]:
    """The table's rows (the ensemble, then every cut) and the verdict on the target."""
    deep, shallow, _ = PAIRS[pair]
    test, calib = loader(digits("test")), loader(calibration_set(), 128)
    cuts: list[Cut] = []
    ensemble: list[TaskScores] = []
    both = 0
    for seed in seeds:
        a, b = train_pair_two((deep, shallow), epochs, seed)
        both = sum(p.numel() for m in (a, b) for p in m.state_dict().values() if p.is_floating_point())
        ensemble.append(task_scores(Ensemble([a, b]), test, TASKS))
        units = len(hs.merge([a, b], calib, method="zip", depth=DEPTH, progress=False).graph.units)
        for k in range(units + 1):
            r = hs.merge([a, b], calib, method="zip", depth=DEPTH, stop_at=k, progress=False)
            p = r.report.partial
            assert p is not None
            if len(cuts) <= k:
                cuts.append(Cut(k, p.last or "(none)", p.parameters))
            cuts[k].scores.append(task_scores(r.model, test, TASKS))
        print(f"  partial zip {pair} seed {seed}: " + " ".join(f"{c.k}:{c.scores[-1].joint:.3f}" for c in cuts),
              flush=True)
    rows = [f"| ensemble A + B | | {both:,} (1.00) | {_fmt([s.joint for s in ensemble])} | "
            f"{_fmt([s.per_task[0] for s in ensemble])} | {_fmt([s.per_task[1] for s in ensemble])} |"]
    rows += [f"| {c.k} | {c.last} | {c.params:,} ({c.params / both:.2f}) | {_fmt([x.joint for x in c.scores])} | "
             f"{_fmt([x.per_task[0] for x in c.scores])} | {_fmt([x.per_task[1] for x in c.scores])} |" for c in cuts]
    return rows, _verdict(pair, cuts, statistics.mean(s.joint for s in ensemble), both)


def _verdict(pair: str, cuts: list[Cut], ensemble: float, both: int) -> str:
    """The best cut that merges something against the ensemble, and the deepest cut within the tolerance."""
    best = max(cuts[1:], key=lambda c: c.joint)
    within = [c for c in cuts[1:] if c.joint >= ensemble - TOLERANCE]
    full = cuts[-1]
    text = (f"{pair}: ensemble {100 * ensemble:.1f}, full zip {100 * full.joint:.1f}; best cut {best.k} (up to "
            f"{best.last}, {best.params / both:.2f} of the two models' parameters): {100 * best.joint:.1f} "
            f"({100 * (best.joint - ensemble):+.1f} points; target ≥ -3.0: "
            f"{'met' if best.joint >= ensemble - TOLERANCE else 'missed'})")
    if within:
        deepest = max(within, key=lambda c: c.k)
        text += (f"; the deepest cut within 3 points of the ensemble merges {deepest.k} of {full.k} units "
                 f"({100 * deepest.joint:.1f}, {deepest.params / both:.2f} of the parameters)")
    return text


def main(seeds: Sequence[int] = (0, 1, 2), epochs: int = 15) -> str:
    print("partial zip: every cut", flush=True)
    parts = ["## Partial zipping: merging up to a cut", "",
             "ZipIt!'s partial zipping (\"zip up to a layer\") on the depth section's pairs: model A (deep, digits 0-4) "
             "and model B (shallow, digits 5-9), trained as there, merged by `hs.merge([A, B], calibration, "
             f"method=\"zip\", depth=\"{DEPTH}\", stop_at=k)` for every cut k: the first k units (of the balanced "
             "deep model, in order) merged, each model's own layers after them (B's inserted zero-residual blocks "
             "left out), the two heads' logits averaged as the ensemble averages them. k = 0 is the ensemble, the "
             "last k the full merge. Parameters: the partially zipped model's (trunk, tails and the unmerge layers "
             "that carry the cut's merged channels back into each model's), and their fraction of the two models "
             f"together. Joint and per-task accuracy (%), mean ± std over seeds {', '.join(map(str, seeds))}.", ""]
    verdicts = []
    for pair in CUT_PAIRS:
        rows, verdict = curve(pair, seeds, epochs)
        parts += [f"### {pair} ({PAIRS[pair][2]})", "",
                  "| units merged | up to | parameters (of A + B) | joint | task A | task B |",
                  "|---|---|---|---|---|---|", *rows, ""]
        verdicts.append(verdict)
    parts += ["Targets (ZipIt! Table 1, CIFAR-10 5+5: partial zip 83.8 against full zip 79.1; ours: at the best cut, "
              "joint accuracy within 3 points of the ensemble): " + "; ".join(verdicts) + ".", "",
              f"Command: `python -m bench partial_zip`. Machine: {machine()}."]
    text = "\n".join(parts)
    write_section("partial_zip", text)
    return text
