"""The papers' protocol on digits 0-4 vs 5-9 (fixed seed, the demo's quick setting), and the MLP barrier."""

from __future__ import annotations

import pathlib

import pytest
import torch

from hetsurgery.demo import DEMO_FOLDER, DemoResult, run_demo
from hetsurgery.evaluate import interpolate
from hetsurgery.merging import align
from hetsurgery.zoo import mlp
from hetsurgery.zoo.data import digits, loader
from hetsurgery.zoo.train import train


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run_demo(tmp_path_factory.mktemp("demo"), quick=True, seed=0, progress=False, echo=lambda _: None)


def test_zip_beats_permute_beats_average_and_both_single_models(demo: DemoResult) -> None:
    s = demo.scores
    assert s["zip"].joint > s["permute"].joint > s["average"].joint
    assert s["zip"].joint > max(s["model A"].joint, s["model B"].joint)
    assert s["model A"].per_task[0] > 0.9 and s["model B"].per_task[1] > 0.9  # the models learned their tasks


def test_demo_writes_the_interpolation_plot(demo: DemoResult) -> None:
    path = demo.paths["interpolation plot"]
    assert pathlib.Path(path).read_bytes().startswith(b"\x89PNG")
    assert demo.barrier["permute-aligned"] < demo.barrier["unaligned"]


def test_the_demo_folder_is_marked_as_the_demo_s_and_holds_every_path_it_reports(demo: DemoResult) -> None:
    folder = pathlib.Path(demo.paths["interpolation plot"]).parent
    assert DEMO_FOLDER.why_not(folder) is None  # a later demo may replace it
    assert all(pathlib.Path(p).exists() and folder in pathlib.Path(p).parents for p in demo.paths.values())
    assert all(r.path.is_file() and folder in r.path.parents for r in demo.parity.values())
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]  # no temporary


def test_permute_alignment_lowers_the_mlp_loss_barrier() -> None:
    torch.manual_seed(7)
    a = train(mlp([64, 64]), digits("train"), epochs=10, seed=7)
    torch.manual_seed(8)
    b = train(mlp([64, 64]), digits("train"), epochs=10, seed=8)
    test = loader(digits("test"))
    _, b_aligned = align([a, b], loader(digits("train"), 256), method="permute", progress=False)
    unaligned = interpolate(a, b, test).barrier
    aligned = interpolate(a, b_aligned, test).barrier
    assert aligned < unaligned
    assert aligned < 0.5 * unaligned
    # the aligned endpoint is the same function as b
    x = digits("test").tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(b(x), b_aligned(x), rtol=1e-4, atol=1e-5)
