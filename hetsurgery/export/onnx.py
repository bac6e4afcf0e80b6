"""ONNX export with the dynamo exporter, checked against onnxruntime at two batch sizes.

>>> import tempfile, torch, hetsurgery as hs
>>> r = to_onnx(hs.zoo.mlp([8]), torch.randn(2, 64), tempfile.mkdtemp() + "/mlp.onnx")  # doctest: +SKIP
>>> r.passed, r.batch_sizes  # doctest: +SKIP
(True, (2, 5))
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hetsurgery.errors import ExportError
from hetsurgery.export.atomic import make_folder, parent_folders
from hetsurgery.export.commit import replace_files, uninterrupted
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.lowering import to_module

OPSET = 18
RTOL, ATOL = 1e-3, 1e-5


@dataclass(frozen=True)
class ParityReport:
    """How closely onnxruntime reproduces the PyTorch model, per batch size and overall.

    ``tolerance_used`` is the check itself: the largest ``|ort - torch| / (atol + rtol·|torch|)`` over every
    output element, so the export passes when it is at most 1. ``max_rel_err`` puts the largest error
    beside the largest output (``max |ort - torch| / max |torch|``, per output), a scale, not the test.
    """

    path: Path
    opset: int
    batch_sizes: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float  # max |ort - torch| / max |torch|, per output
    tolerance_used: float  # max |ort - torch| / (atol + rtol * |torch|); at most 1 passes
    per_batch: tuple[tuple[int, float, float, float], ...]  # (batch size, max abs, max rel, tolerance used)
    providers: tuple[str, ...]
    rtol: float
    atol: float
    passed: bool  # every output element within atol + rtol * |torch|: tolerance_used <= 1
    checked: bool
    seconds: float

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        sizes = ", ".join(map(str, self.batch_sizes))
        return (f"{self.path.name}: opset {self.opset}, batch sizes {sizes}: max abs err {self.max_abs_err:.2e}, "
                f"worst |err| / (atol + rtol*|torch|) = {self.tolerance_used:.2g} (rtol {self.rtol:g}, "
                f"atol {self.atol:g}; at most 1 passes): {verdict}; providers {', '.join(self.providers)}, "
                f"{self.seconds:.1f}s")


def to_onnx(model: nn.Module | ModelGraph, example_inputs: torch.Tensor | Sequence[torch.Tensor],
            path: str | os.PathLike[str], *, dynamic_batch: bool = True, check: bool = True,
            opset: int = OPSET, rtol: float = RTOL, atol: float = ATOL) -> ParityReport:
    """Export ``model`` (in eval mode) to ``path`` and compare onnxruntime with PyTorch.

    The exporter is ``torch.onnx.export(dynamo=True)``; with ``dynamic_batch`` dim 0 of every input is
    symbolic and the check runs at the example's batch size and at a second one. The CUDA execution
    provider is used when onnxruntime has it, the CPU one otherwise. With ``check`` a mismatch above
    ``rtol``/``atol`` raises ``ExportError`` and nothing is written; without it the report says so.
    """
    if opset < 18:
        raise ExportError(f"opset {opset} is too old: the dynamo exporter needs opset 18 or newer")
    module = to_module(model) if isinstance(model, ModelGraph) else model
    device = next((t.device for t in module.state_dict().values()), torch.device("cpu"))
    inputs = tuple(x.to(device) for x in _as_tuple(example_inputs))
    if not inputs:
        raise ExportError("to_onnx needs at least one example input")
    path = Path(path)
    clock = time.perf_counter()
    with eval_mode(module), _staging(path) as staged:  # staging first: a bad output path fails before exporting
        export_inputs = _batch_of(inputs, max(2, _batch(inputs))) if dynamic_batch else inputs
        _save(_export(module, export_inputs, opset, dynamic_batch), staged)
        sizes = _batch_sizes(inputs, dynamic_batch)
        session, providers = _session(staged)
        per_batch = tuple((b, *_errors(module, session, _batch_of(inputs, b), rtol, atol)) for b in sizes)
        worst = max(e[3] for e in per_batch)
        report = ParityReport(
            path=path, opset=opset, batch_sizes=sizes, max_abs_err=max(e[1] for e in per_batch),
            max_rel_err=max(e[2] for e in per_batch), tolerance_used=worst, per_batch=per_batch,
            providers=providers, rtol=rtol, atol=atol, passed=worst <= 1.0, checked=check,
            seconds=time.perf_counter() - clock)
        if check and not report.passed:
            raise ExportError(f"onnxruntime disagrees with PyTorch beyond rtol={rtol:g}, atol={atol:g}: {report}; "
                              f"{path} was not written")
    return report


def _as_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def _batch(inputs: tuple[torch.Tensor, ...]) -> int:
    sizes = {x.shape[0] for x in inputs if x.dim() > 0}
    if len(sizes) != 1:
        raise ExportError(f"every example input needs the same batch size in dim 0, got {sorted(sizes)}")
    return sizes.pop()


def _batch_sizes(inputs: tuple[torch.Tensor, ...], dynamic: bool) -> tuple[int, ...]:
    b = _batch(inputs)
    return (b, 2 * b + 1) if dynamic else (b,)


def _batch_of(inputs: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
    """The example rows repeated cyclically to ``size``; floating inputs get a little seeded noise."""
    gen = torch.Generator().manual_seed(size)
    out = []
    for x in inputs:
        if x.dim() == 0 or size == x.shape[0]:
            out.append(x)
            continue
        rows = x[torch.arange(size) % x.shape[0]]
        if rows.is_floating_point():
            noise = torch.randn(rows.shape, generator=gen, dtype=rows.dtype).to(rows.device)
            rows = rows + 0.1 * rows.std().clamp_min(1e-3) * noise
        out.append(rows)
    return tuple(out)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.train(flag)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Keep the exporter's chatter (progress prints, warnings about optional packages) for error messages."""
    buffer = io.StringIO()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        logger.setLevel(level)


def _export(module: nn.Module, inputs: tuple[torch.Tensor, ...], opset: int, dynamic: bool) -> torch.onnx.ONNXProgram:
    shapes = tuple({0: torch.export.Dim("batch")} if x.dim() > 0 else None for x in inputs) if dynamic else None
    with _quiet() as chatter:
        try:
            program = torch.onnx.export(module, inputs, None, dynamo=True, opset_version=opset,
                                        dynamic_shapes=shapes, verbose=False)
        except Exception as exc:  # torch.export and the translator raise many types
            hint = (" The batch dimension could not stay symbolic; try dynamic_batch=False."
                    if dynamic and "constraint" in str(exc).lower() else "")
            raise ExportError(f"torch.onnx.export (dynamo) failed for {type(module).__name__}: "
                              f"{type(exc).__name__}: {str(exc)[:2000]}{hint}\n{chatter.getvalue()[-2000:]}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` holding a file of the same name; its files replace the targets
    together (the model, and its .data file when it is large): Ctrl-C cannot leave one old and one new."""
    folder = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with parent_folders(path):
        make_folder(folder, path)
        try:
            yield folder / path.name
            replace_files([(item, path.with_name(item.name)) for item in folder.iterdir()])
        finally:
            with uninterrupted():
                shutil.rmtree(folder, ignore_errors=True)


def _save(program: torch.onnx.ONNXProgram, path: Path) -> None:
    with _quiet():
        program.save(str(path))  # one file unless the weights pass protobuf's 2 GB limit
    if not path.is_file():
        raise ExportError(f"the ONNX program was not written to {path}")


def _session(path: Path) -> tuple[Any, tuple[str, ...]]:
    import onnxruntime as ort

    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
        raise ExportError(f"onnxruntime cannot load the exported model: {exc}") from exc
    return session, tuple(session.get_providers())


def _errors(module: nn.Module, session: Any, inputs: tuple[torch.Tensor, ...], rtol: float,
            atol: float) -> tuple[float, float, float]:
    """Max abs error, max abs error over the largest output, and the tolerance used (see ``ParityReport``)."""
    with torch.no_grad():
        want = [t.detach().cpu().numpy() for t in flat_outputs(module(*inputs))]
    feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    got = session.run(None, feed)
    if len(got) != len(want):
        raise ExportError(f"onnxruntime returned {len(got)} outputs, PyTorch {len(want)}")
    abs_err = rel_err = used = 0.0
    for a, b in zip(want, got, strict=True):
        if a.shape != b.shape:
            raise ExportError(f"output shape differs: PyTorch {a.shape}, onnxruntime {b.shape}")
        ref, out = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            diff = np.where(ref == out, 0.0, np.abs(ref - out))  # equal infinities agree; NaN stays NaN
            ratio = np.divide(diff, atol + rtol * np.abs(ref), out=np.zeros_like(diff), where=diff != 0)
        abs_err = max(abs_err, _peak(diff))
        rel_err = max(rel_err, _peak(diff) / max(_peak(np.abs(ref)), 1e-12))
        used = max(used, _peak(ratio))
    return abs_err, rel_err, used


def _peak(values: np.ndarray) -> float:
    """The largest of ``values``; a NaN counts as infinitely large (a NaN output never passes)."""
    peak = float(values.max(initial=0.0))
    return math.inf if math.isnan(peak) else peak


def flat_outputs(out: object) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or nested tuples, lists and dicts of them) in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in flat_outputs(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in flat_outputs(item)]
    return []
