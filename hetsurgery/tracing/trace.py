"""``trace``: torch.fx symbolic tracing of a copy of the model's structure, then ``lift_graph``."""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from hetsurgery.errors import TracingError
from hetsurgery.ir import ModelGraph
from hetsurgery.tracing.inline import inline_wrapped
from hetsurgery.tracing.lift import lift_graph, structural_copy

_TORCH_DIR = os.path.dirname(torch.__file__)


class _Tracer(fx.Tracer):
    """The default tracer, plus user-chosen leaf modules (by class or qualified name)."""

    def __init__(self, leaf_modules: Sequence[type[nn.Module] | str]) -> None:
        super().__init__()
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self.leaf_names = {m for m in leaf_modules if isinstance(m, str)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaf_types) or module_qualified_name in self.leaf_names:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    concrete_args: dict[str, Any] | None = None,
    name: str | None = None,
    probe: bool = True,
) -> ModelGraph:
    """Trace ``model`` into a ``ModelGraph`` of permutation groups, units and stages.

    ``example_inputs`` runs once (eval mode, no grad, the train/eval flags restored) to record every node's
    shape. ``leaf_modules`` keeps modules opaque (their groups freeze unless the probe passes them);
    ``concrete_args`` fixes inputs that decide control flow. An ``fx.GraphModule`` (made by another tracer,
    e.g. Hugging Face's) is lifted as it is, without tracing it again. Calls of functions fx kept whole
    (``torch.fx.wrap``) are inlined when they can be traced with the example values (``inline_wrapped``).
    ``probe=False`` freezes every op the rules do not know instead of probing it (``tracing.probe``). The graph owns a copy of the model's structure that shares its tensors:
    nothing hetsurgery does changes ``model``.

    >>> import torch, hetsurgery
    >>> g = hetsurgery.trace(hetsurgery.zoo.mlp([32], in_features=64, num_classes=10), torch.randn(2, 64))
    >>> print(g.summary().splitlines()[0])
    ModelGraph MLP: 2 groups, 1 permutable, coverage 1.000
    """
    name = name or type(model).__name__
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    root = structural_copy(model)
    if isinstance(root, fx.GraphModule):
        return lift_graph(inline_wrapped(root, inputs, name), inputs, name, probe=probe)
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(root, concrete_args=concrete_args)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ... for one cause
        raise TracingError(_explain(name, exc)) from exc
    gm = inline_wrapped(fx.GraphModule(tracer.root, graph, name), inputs, name)
    return lift_graph(gm, inputs, name, probe=probe)


def _explain(name: str, exc: Exception) -> str:
    """Name the user's line that fx could not trace, and say what to do about it."""
    where = ""
    tb = exc.__traceback__
    frame_info = None
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_TORCH_DIR):
            frame_info = tb
        tb = tb.tb_next
    if frame_info is not None:
        summary = traceback.extract_tb(frame_info, limit=1)[0]
        owner = frame_info.tb_frame.f_locals.get("self")
        owner_name = f" of {type(owner).__name__}" if isinstance(owner, nn.Module) else ""
        where = (f" in {summary.name}{owner_name} ({summary.filename}:{summary.lineno}): "
                 f"`{(summary.line or '').strip()}`")
    return (f"{name}: torch.fx cannot trace the model{where}. {type(exc).__name__}: {exc}\n"
            "Control flow or Python calls that depend on tensor values cannot be traced. Either pass "
            "leaf_modules=(TheModuleClass,) or leaf_modules=('qualified.name',) to keep the module containing "
            "it opaque (its channels are then frozen), or fix the deciding input with "
            "concrete_args={'arg_name': value}.")
