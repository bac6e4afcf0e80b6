"""The check ``save`` runs before a package goes into place: it loads back both ways — rebuilt from
``graph.json`` and through its ``model.py`` — and each computes what the original model computes.

A failure of the original model on its example inputs is bad input (``InputError``); a failure or a
difference of a loaded copy is our bug (``ExportError``). Either way the package is not renamed into place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import fx, nn

from hetsurgery.errors import ExportError
from hetsurgery.export.codegen import dtype_name
from hetsurgery.export.errors import InputError
from hetsurgery.export.model_py import model_of, run_model_py, short
from hetsurgery.export.onnx import eval_mode, flat_outputs
from hetsurgery.export.reading import from_data, plan_file

RTOL, ATOL = 1e-5, 1e-6


def check_round_trip(folder: Path, gm: fx.GraphModule, inputs: Sequence[torch.Tensor], name: str) -> None:
    """Load ``folder`` from graph.json and through model.py and compare each with ``gm`` on ``inputs``."""
    loaders: dict[str, Callable[[], nn.Module]] = {
        "graph.json": lambda: from_data(folder, plan_file(folder))[0],
        "model.py": lambda: model_of(run_model_py(folder / "model.py", (folder / "model.py").read_bytes()), folder,
                                     "cpu"),
    }
    twins = {}
    for source, load in loaders.items():
        try:
            twins[source] = load()
        except Exception as exc:  # whatever it is, the package we just wrote does not load: our bug
            raise ExportError(f"{name}: the generated package does not load back from its {source}: {short(exc)}; "
                              "nothing was written") from exc
    if not inputs:
        return
    device = next((t.device for t in gm.state_dict().values()), torch.device("cpu"))
    shapes = ", ".join(f"{tuple(x.shape)} {dtype_name(x.dtype)}" for x in inputs)
    with eval_mode(gm), torch.no_grad():
        try:
            want = flat_outputs(gm(*[x.to(device) for x in inputs]))
        except Exception as exc:  # the user's model on the user's (or traced) inputs
            raise InputError(f"{name}: the model does not run on the example inputs ({shapes}): {short(exc)}. "
                             "Pass example_inputs= of the shape and dtype the model takes.") from exc
        for source, twin in twins.items():
            what = "model.py" if source == "model.py" else "model rebuilt from graph.json"
            try:
                got = flat_outputs(twin(*[x.cpu() for x in inputs]))
            except Exception as exc:  # the model runs, its saved form does not: our bug
                raise ExportError(f"{name}: the generated {what} fails on the example inputs ({shapes}) where the "
                                  f"model runs: {short(exc)}; nothing was written") from exc
            if not _same_outputs(want, got):
                raise ExportError(f"{name}: the {what} computes something else than the model; nothing was written")


def _same_outputs(want: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> bool:
    return len(want) == len(got) and all(
        a.dtype == b.dtype and a.shape == b.shape and torch.allclose(a.cpu(), b, rtol=RTOL, atol=ATOL)
        for a, b in zip(want, got, strict=True))
