"""``hetsurgery demo``: two models trained on disjoint digit tasks, merged by every method, evaluated.

Model A learns digits 0-4 and model B digits 5-9 (both heads see all ten classes). Each merge method
combines them without training; the table gives joint accuracy (argmax over all ten classes), per-task
accuracy (argmax inside the task's classes) and their average, next to A, B and their output ensemble.
A second pair differs in depth and width (an MLP with four hidden layers of 64 on digits 0-4, one with
two hidden layers of 128 and 96 on digits 5-9): it is merged by depth alignment (LMA, SMA with inserted
identity layers, CLA with fused layers) and zip, and its depth plan and CKA matrices are drawn. A third
experiment interpolates two MLPs trained on all digits, before and after permutation alignment, and plots
the loss barrier. Every merged model is saved as a package (``out/<method>/``: model.py,
model.safetensors, plan.json, report.md) and exported to ONNX with an onnxruntime parity check
(``out/<method>/model.onnx``); the merged graph and one group's width plans are drawn in ``out/pictures/``.
``out/hetsurgery-outputs.json`` lists every file: the mark of a folder the demo may replace.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

from hetsurgery import zoo
from hetsurgery.evaluate import Ensemble, TaskScores, interpolate, plot_curves, task_scores
from hetsurgery.export import ParityReport, Picture, atomic_folder, render, save, to_onnx
from hetsurgery.export.manifest import write_manifest, written_by
from hetsurgery.merging import MergeResult, align, merge
from hetsurgery.zoo.data import TASKS, digits, loader
from hetsurgery.zoo.train import train

METHODS = ("average", "permute", "weight", "ot", "zip")
DEPTH_PAIR = ((64, 64, 64, 64), (128, 96))  # deep and narrow on task A, shallow and wide on task B
DEPTH_MERGES = (("lma", "add"), ("sma", "add"), ("cla", "merge"))
DEMO_FOLDER = written_by("demo")  # the only folder the demo replaces


@dataclass
class DemoResult:
    scores: dict[str, TaskScores]
    seconds: dict[str, float]
    merges: dict[str, MergeResult] = field(repr=False)
    barrier: dict[str, float]
    paths: dict[str, Path]
    models: tuple[nn.Module, nn.Module] = field(repr=False)
    parity: dict[str, ParityReport] = field(default_factory=dict)
    depth_scores: dict[str, TaskScores] = field(default_factory=dict)
    depth_seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        out = _table(self.scores, self.seconds)
        if self.depth_scores:
            mlps = " / ".join("-".join(map(str, h)) for h in DEPTH_PAIR)
            out += f"\n\ndifferent depth and width (MLP {mlps}), zip:\n" + _table(self.depth_scores, self.depth_seconds)
        return out


def _table(scores: dict[str, TaskScores], seconds: dict[str, float]) -> str:
    w = max(10, *(len(n) for n in scores))
    head = f"{'model':<{w}} {'joint':>6} {'task A':>7} {'task B':>7} {'avg':>6} {'merge s':>8}"
    lines = [head, "-" * len(head)]
    for name, s in scores.items():
        secs = f"{seconds[name]:8.2f}" if name in seconds else " " * 8
        lines.append(f"{name:<{w}} {s.joint:6.3f} {s.per_task[0]:7.3f} {s.per_task[1]:7.3f} {s.task_avg:6.3f} {secs}")
    return "\n".join(lines)


def calibration_set(step: int = 2) -> Subset:
    """Every ``step``-th training image of both tasks: the data the merge may look at (no labels used)."""
    train_set = digits("train")
    return Subset(train_set, range(0, len(train_set), step))


def train_pair(factory: Callable[[], nn.Module], epochs: int, seed: int, progress: bool = False
               ) -> tuple[nn.Module, nn.Module]:
    """Model A on digits 0-4, model B on digits 5-9; independent initialisations and data orders."""
    models = []
    for t, classes in enumerate(TASKS):
        torch.manual_seed(1000 * seed + t)
        models.append(train(factory(), digits("train", classes), epochs=epochs, seed=1000 * seed + t,
                            progress=progress))
    return models[0], models[1]


def run_demo(out: str | Path = "hetsurgery-out", *, quick: bool = False, seed: int = 0, progress: bool = True,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Train, merge, evaluate, save, export and draw into the folder ``out``, written whole at the end.

    ``out`` must be new, empty, or a folder an earlier demo wrote (its ``hetsurgery-outputs.json`` lists every
    file in it); anything else is refused with ``InputError`` before any training. The folder is built as a
    hidden sibling and exchanged with the old one at the end: an error or Ctrl-C leaves ``out`` as it was.
    """
    out = Path(out)
    with atomic_folder(out, DEMO_FOLDER) as tmp:
        result = _run(tmp, quick, seed, progress, echo)
        write_manifest(tmp, "demo")
    return replace(result, paths={what: out / p.relative_to(tmp) for what, p in result.paths.items()},
                   parity={m: replace(r, path=out / r.path.relative_to(tmp)) for m, r in result.parity.items()})


def _run(out: Path, quick: bool, seed: int, progress: bool, echo: Callable[[str], None]) -> DemoResult:
    factory = (lambda: zoo.resnet((1, 1, 1))) if quick else zoo.resnet20
    epochs = 8 if quick else 15
    echo(f"training model A (digits 0-4) and model B (digits 5-9): {'ResNet-8' if quick else 'ResNet-20'}, "
         f"{epochs} epochs each")
    a, b = train_pair(factory, epochs, seed, progress)
    test = loader(digits("test"))
    calib = loader(calibration_set(), 128)
    scores = {"model A": task_scores(a, test, TASKS), "model B": task_scores(b, test, TASKS),
              "ensemble": task_scores(Ensemble([a, b]), test, TASKS)}
    seconds, merges = {}, {}
    for method in METHODS:
        clock = time.perf_counter()
        merges[method] = merge([a, b], calib, method=method, progress=progress)
        seconds[method] = time.perf_counter() - clock
        scores[method] = task_scores(merges[method].model, test, TASKS)
    echo("saving every merged model as a package and exporting it to ONNX (onnxruntime parity check)")
    parity, paths = _save_and_export(out, merges, _table(scores, seconds), echo)
    paths.update(_pictures(out / "pictures", merges, echo))
    echo("a pair of different depth and width: merged by depth alignment and zip")
    depth_scores, depth_seconds, depth_paths = _depth_experiment(out, epochs, seed, test, calib, echo)
    paths.update(depth_paths)
    barrier, plot = _barrier_experiment(out, epochs, seed)
    paths["interpolation plot"] = plot
    return DemoResult(scores, seconds, merges, barrier, paths, (a, b), parity, depth_scores, depth_seconds)


def _depth_experiment(out: Path, epochs: int, seed: int, test: Iterable, calib: Iterable, echo: Callable[[str], None]
                      ) -> tuple[dict[str, TaskScores], dict[str, float], dict[str, Path]]:
    """A deep narrow MLP (task A) and a shallow wide one (task B), merged by each depth method; the LMA merge is
    saved, exported and its depth plan drawn."""
    from hetsurgery.export.depth_pictures import cka_heatmap

    pair: list[nn.Module] = []
    for t, hidden in enumerate(DEPTH_PAIR):
        torch.manual_seed(1000 * seed + 20 + t)
        pair.append(train(zoo.mlp(list(hidden)), digits("train", TASKS[t]), epochs=epochs, seed=1000 * seed + 20 + t))
    scores = {f"MLP A {'-'.join(map(str, DEPTH_PAIR[0]))}": task_scores(pair[0], test, TASKS),
              f"MLP B {'-'.join(map(str, DEPTH_PAIR[1]))}": task_scores(pair[1], test, TASKS)}
    seconds: dict[str, float] = {}
    kept = None
    for depth, balance in DEPTH_MERGES:
        name = f"{depth} ({balance})"
        clock = time.perf_counter()
        result = merge(pair, calib, method="zip", depth=depth, balance=balance, progress=False)
        seconds[name] = time.perf_counter() - clock
        scores[name] = task_scores(result.model, test, TASKS)
        kept = kept or result
    assert kept is not None and kept.depth is not None
    folder = save(kept.graph, out / "depth-lma-zip", plan=kept.plan, depth=kept.depth, report=str(kept.report),
                  name="lma + zip merge of a deep and a shallow MLP")
    parity = to_onnx(kept.model, digits("test").tensors[0][:4], folder / "model.onnx")
    echo(f"  lma+zip  {parity}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plan_picture = render(kept.depth, out / "pictures" / "depth-plan.svg", names=("MLP A", "MLP B"))
    heatmap = cka_heatmap(kept.depth, out / "pictures" / "depth-cka.png")
    return scores, seconds, {"package (depth lma+zip)": folder, "depth plan picture": plan_picture.path,
                             "CKA heatmap": heatmap}


def _save_and_export(out: Path, merges: dict[str, MergeResult], table: str, echo: Callable[[str], None]
                     ) -> tuple[dict[str, ParityReport], dict[str, Path]]:
    """``out/<method>/``: the package and ``model.onnx``, checked against onnxruntime at two batch sizes."""
    example = digits("test").tensors[0][:4]
    parity, paths = {}, {}
    for method, result in merges.items():
        report = (f"Model A (digits 0-4) and model B (digits 5-9) merged by `{method}` without training "
                  f"(`hetsurgery demo`). Accuracy on the 450 test digits:\n\n```text\n{table}\n```\n\n"
                  f"```text\n{result.report}\n```")
        folder = save(result.graph, out / method, plan=result.plan, report=report, name=f"{method} merge of A and B")
        parity[method] = to_onnx(result.model, example, folder / "model.onnx")
        echo(f"  {method:<8} {parity[method]}")
        paths[f"package ({method})"] = folder
        paths[f"onnx ({method})"] = parity[method].path
    return parity, paths


def _pictures(folder: Path, merges: dict[str, MergeResult], echo: Callable[[str], None]) -> dict[str, Path]:
    """The zip-merged graph, and the zip and permute plans of its first small permutable group."""
    graph = merges["zip"].graph
    gid = next(g.id for g in graph.permutable() if g.size <= 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a missing `dot` is said once, below
        pictures: dict[str, Picture] = {"graph picture": render(graph, folder / "merged-graph.svg")}
        for method in ("zip", "permute"):
            pictures[f"plan picture ({method})"] = render(merges[method].plan, folder / f"{method}-plan-group-{gid}.svg",
                                                          group=gid, names=("model A", "model B"))
    notes = {pic.note for pic in pictures.values() if pic.note}
    if notes:
        echo(notes.pop().split(" then run")[0] + "; the pictures are written as Graphviz sources (.gv).")
    return {what: pic.path for what, pic in pictures.items()}


def _barrier_experiment(out: Path, epochs: int, seed: int) -> tuple[dict[str, float], Path]:
    """Two MLPs on all digits: the loss barrier along the straight line, unaligned and permute-aligned."""
    mlps = []
    for k in range(2):
        torch.manual_seed(1000 * seed + 10 + k)
        mlps.append(train(zoo.mlp([128, 128]), digits("train"), epochs=epochs, seed=1000 * seed + 10 + k))
    test = loader(digits("test"))
    _, b_aligned = align(mlps, loader(calibration_set(), 128), method="permute", progress=False)
    curves = {"unaligned": interpolate(mlps[0], mlps[1], test),
              "permute-aligned": interpolate(mlps[0], b_aligned, test)}
    path = plot_curves(curves, out / "interpolation.png", title="MLP 128-128 on digits: loss along the line")
    return {name: c.barrier for name, c in curves.items()}, path
