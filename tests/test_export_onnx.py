"""ONNX export: every zoo model and every merge the demo makes pass the onnxruntime parity check at two
batch sizes; a mismatch raises and writes nothing."""

from __future__ import annotations

import pathlib

import onnx
import outside_models as om
import pytest
import torch
from helpers import randomise, randomise_calibrated
from torch import nn

import hetsurgery as hs
import hetsurgery.export.onnx as onnx_export
from hetsurgery.demo import METHODS as DEMO_METHODS
from hetsurgery.export import InputError, to_onnx

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _check(report: hs.export.ParityReport, path: pathlib.Path, sizes: tuple[int, ...] = (2, 5)) -> None:
    assert report.passed and report.checked, str(report)
    assert report.batch_sizes == sizes and [b for b, *_ in report.per_batch] == list(sizes)
    assert report.tolerance_used <= 1 and "CPUExecutionProvider" in report.providers
    model = onnx.load(str(path))
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 18
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # one file, no temporaries left


# every architecture of the zoo; resnet26/32/50 are resnet20 with more blocks of the same kind
ZOO = {
    "mlp": hs.zoo.mlp,
    "vgg": hs.zoo.vgg,
    "resnet20": hs.zoo.resnet20,
    "transformer-mha": lambda: hs.zoo.transformer("mha"),
    "transformer-manual": lambda: hs.zoo.transformer("manual"),
    "transformer-sdpa": lambda: hs.zoo.transformer("sdpa"),
    "densenet": hs.zoo.densenet,
    "mobilenet": hs.zoo.mobilenet,
}


def test_the_list_covers_every_zoo_factory() -> None:
    factories = {getattr(f, "func", f) for f in hs.zoo.ZOO.values()}
    deeper_resnets = {hs.zoo.resnet26, hs.zoo.resnet32, hs.zoo.resnet50}
    assert factories - deeper_resnets <= {hs.zoo.mlp, hs.zoo.vgg, hs.zoo.resnet20, hs.zoo.transformer,
                                          hs.zoo.densenet, hs.zoo.mobilenet}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_exports_with_parity(name: str, tmp_path: pathlib.Path) -> None:
    model = randomise(ZOO[name](), seed=1)
    path = tmp_path / f"{name}.onnx"
    _check(to_onnx(model, X, path), path)


# models in the style of real architectures (tests/outside_models.py): roll, chunk, unbind, einsum, shuffle
OUTSIDE = {"convnext": om.TinyConvNeXt, "swin": om.TinySwin, "shufflenet": om.TinyShuffleNet,
           "efficientnet": om.TinyEfficientNet, "chunk-vit": om.ChunkViT, "maxvit": om.TinyMaxViT}


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_every_outside_style_model_exports_with_parity(name: str, tmp_path: pathlib.Path) -> None:
    model = randomise(OUTSIDE[name](), seed=1)
    path = tmp_path / f"{name}.onnx"
    _check(to_onnx(model, X, path), path)


@pytest.mark.parametrize("method", DEMO_METHODS)
def test_every_merge_the_demo_makes_exports_with_parity(method: str, tmp_path: pathlib.Path) -> None:
    calib = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a = randomise_calibrated(hs.zoo.resnet((1, 1, 1)), calib, seed=2)  # the demo's quick ResNet-8
    b = randomise_calibrated(hs.zoo.resnet((1, 1, 1)), calib, seed=3)
    merged = hs.merge([a, b], [calib], method=method, progress=False)
    path = tmp_path / f"{method}.onnx"
    _check(to_onnx(merged.model, X, path), path)


def test_batch_of_one_and_static_batch(tmp_path: pathlib.Path) -> None:
    model = hs.zoo.mlp([16])
    _check(to_onnx(model, torch.randn(1, 64), tmp_path / "one.onnx"), tmp_path / "one.onnx", sizes=(1, 3))
    (tmp_path / "one.onnx").unlink()
    _check(to_onnx(model, torch.randn(4, 64), tmp_path / "static.onnx", dynamic_batch=False),
           tmp_path / "static.onnx", sizes=(4,))


def _offset_session(monkeypatch: pytest.MonkeyPatch, offset: float) -> None:
    """onnxruntime, but every output is ``offset`` too large."""
    real_session = onnx_export._session

    class Off:
        def __init__(self, path: pathlib.Path) -> None:
            self.session, _ = real_session(path)

        def get_inputs(self) -> list:
            return self.session.get_inputs()

        def run(self, names: object, feed: dict) -> list:
            return [y + offset for y in self.session.run(names, feed)]

    monkeypatch.setattr(onnx_export, "_session", lambda path: (Off(path), ("CPUExecutionProvider",)))


def test_a_mismatch_raises_and_writes_nothing(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offset_session(monkeypatch, 1e-2)
    model = hs.zoo.mlp([16])
    with pytest.raises(hs.ExportError, match="onnxruntime disagrees"):
        to_onnx(model, torch.randn(2, 64), tmp_path / "new" / "folders" / "off.onnx")
    assert list(tmp_path.iterdir()) == []  # not even the folders it created
    report = to_onnx(model, torch.randn(2, 64), tmp_path / "off.onnx", check=False)
    assert not report.passed and report.max_abs_err == pytest.approx(1e-2, rel=1e-3)
    assert (tmp_path / "off.onnx").is_file()


def _constant(values: list[float]) -> nn.Module:
    """A model whose outputs are ``values`` whatever the input."""
    layer = nn.Linear(4, len(values))
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(values))
    return layer


@pytest.mark.parametrize(("offset", "used", "passed"), [(1e-4, 10.0, False), (5e-6, 0.5, True)])
def test_the_report_gives_the_tolerance_the_check_uses(offset: float, used: float, passed: bool,
                                                       tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offset_session(monkeypatch, offset)
    report = to_onnx(_constant([0.0, 100.0]), torch.randn(2, 4), tmp_path / "c.onnx", check=False)
    # the error at the output 0 is measured against atol 1e-5 alone: offset / 1e-5
    assert report.tolerance_used == pytest.approx(used, rel=1e-3) and report.passed is passed
    assert report.max_rel_err < 2e-6  # small beside the largest output, though the check may fail
    assert f"worst |err| / (atol + rtol*|torch|) = {used:.2g}" in str(report)
    assert ("passed" if passed else "FAILED") in str(report)


def test_an_output_folder_that_cannot_be_created_is_refused_before_exporting(tmp_path: pathlib.Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(InputError, match=r"cannot write .*afile/m\.onnx"):
        to_onnx(hs.zoo.mlp([16]), torch.randn(2, 64), tmp_path / "afile" / "m.onnx")
