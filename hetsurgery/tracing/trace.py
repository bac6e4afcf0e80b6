"""``trace``: a model (fx first, then torch.export), an ``ExportedProgram`` or a ``GraphModule``, lifted."""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import torch
from torch import fx, nn
from torch.export import ExportedProgram

from hetsurgery.errors import TracingError
from hetsurgery.ir import FrontEnd, FrontEndKind, ModelGraph
from hetsurgery.tracing.example import Example
from hetsurgery.tracing.export_front import dynamic_dims, export_program, normalise, one_line, user_inputs
from hetsurgery.tracing.export_layers import program_name
from hetsurgery.tracing.export_root import program_root
from hetsurgery.tracing.fx_inputs import drop_fixed_inputs, placeholder_names
from hetsurgery.tracing.inline import inline_wrapped
from hetsurgery.tracing.lift import lift_graph, structural_copy

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # hetsurgery itself
FRONT_ENDS = ("auto", "fx", "export")

ExampleInputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]


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
    model: nn.Module | ExportedProgram,
    example_inputs: ExampleInputs | None = None,
    *,
    frontend: str = "auto",
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    concrete_args: dict[str, Any] | None = None,
    name: str | None = None,
    probe: bool = True,
) -> ModelGraph:
    """Trace ``model`` into a ``ModelGraph`` of permutation groups, units and stages.

    ``example_inputs`` is a tensor, a sequence of tensors, or a dict of keyword inputs (``{"input_ids": ids,
    "attention_mask": mask}``; values that are not tensors, such as ``use_cache=False``, are constants); it
    runs once (eval mode, no grad, the train/eval flags restored) to record every node's shape. The graph
    takes the tensors as inputs named after the forward's parameters (``ModelGraph.example_inputs`` lists
    them in its order), and returns what the model returns.

    ``frontend="auto"`` traces an ``nn.Module`` with torch.fx and, when fx cannot, with ``torch.export``
    (``strict=False``, dynamic batch and sequence dims), whose aten graph is normalised back into torch-level
    calls (``tracing.export_front``); ``"fx"`` or ``"export"`` choose one. ``ModelGraph.front_end`` (and the
    first lines of ``summary()``) say which ran and why. An ``ExportedProgram`` is normalised as it is
    (``example_inputs`` defaults to the program's own); an ``fx.GraphModule`` made by another tracer (e.g.
    Hugging Face's) is lifted as it is. A forward that takes ``use_cache`` gets ``use_cache=False`` unless
    given (a cache object is no traceable output).

    fx only: ``leaf_modules`` keeps modules opaque (their groups freeze unless the probe passes them);
    ``concrete_args`` fixes inputs that decide control flow (with keyword example inputs, every forward
    parameter not given is fixed at its default). Calls of functions fx kept whole (``torch.fx.wrap``) are
    inlined when they can be traced with the example values (``inline_wrapped``). ``probe=False`` freezes every
    op the rules do not know instead of probing it (``tracing.probe``). The graph owns a copy of the model's
    structure that shares its tensors: nothing hetsurgery does changes ``model``.

    >>> import torch, hetsurgery
    >>> g = hetsurgery.trace(hetsurgery.zoo.mlp([32], in_features=64, num_classes=10), torch.randn(2, 64))
    >>> print(g.summary().splitlines()[0])
    ModelGraph MLP: 2 groups, 1 permutable, coverage 1.000
    >>> g = hetsurgery.trace(hetsurgery.zoo.mlp([32], in_features=64, num_classes=10), torch.randn(2, 64),
    ...                      frontend="export")
    >>> print(g.summary().splitlines()[1])
    front end: torch.export (strict=False); asked for; dynamic dims: x 0
    """
    if frontend not in FRONT_ENDS:
        raise TracingError(f"frontend={frontend!r}: use one of {', '.join(map(repr, FRONT_ENDS))}")
    if isinstance(model, ExportedProgram):
        return _from_program(model, example_inputs, name or program_name(model.graph_module) or "ExportedProgram",
                             probe)
    if not isinstance(model, nn.Module):
        raise TracingError(f"trace takes an nn.Module, an ExportedProgram or an fx.GraphModule, not a "
                           f"{type(model).__name__}")
    name = name or type(model).__name__
    if example_inputs is None:
        raise TracingError(f"{name}: give example_inputs (a batch of the inputs the model takes)")
    example = Example.of(example_inputs)
    if isinstance(model, fx.GraphModule):
        root = cast(fx.GraphModule, structural_copy(model))
        inputs = _ordered(example, root, placeholder_names(root), name)
        g = lift_graph(inline_wrapped(root, inputs, name), inputs, name, probe=probe)
        return replace(g, front_end=FrontEnd(FrontEndKind.GRAPH))
    example.named(model.forward, name)  # inputs that do not fit are the caller's to fix, whatever the front end
    example = example.defaults_for(model)
    if frontend == "export":
        return _exported(model, example, name, probe, "asked for")
    try:
        return _fx(model, example, leaf_modules, concrete_args, name, probe)
    except TracingError as failed:
        if frontend == "fx":
            raise TracingError(str(failed)) from failed.__cause__
        line = failed.line if isinstance(failed, _FxFailed) else one_line(str(failed))
        try:
            return _exported(model, example, name, probe, f"torch.fx failed: {line}")
        except TracingError as exc:
            raise TracingError(f"{failed}\ntorch.export failed too: {exc}") from failed


class _FxFailed(TracingError):
    """torch.fx could not trace the model: the message in full, ``line`` in one line."""

    def __init__(self, message: str, line: str) -> None:
        super().__init__(message)
        self.line = line


def _fx(model: nn.Module, example: Example, leaf_modules: Sequence[type[nn.Module] | str],
        concrete_args: dict[str, Any] | None, name: str, probe: bool) -> ModelGraph:
    root = structural_copy(model)
    fixed = {**(example.fixed_for_fx(root) if example.keyword else {}), **(concrete_args or {})}
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(root, concrete_args=fixed or None)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ... for one cause
        raise _FxFailed(*_explain(name, exc, model)) from exc
    if fixed:
        drop_fixed_inputs(graph)  # the graph takes the tensors the example gives, nothing else
    gm = fx.GraphModule(tracer.root, graph, name)
    inputs = _ordered(example, root, placeholder_names(gm), name)
    gm = inline_wrapped(gm, inputs, name)
    g = lift_graph(gm, inputs, name, probe=probe)
    return replace(g, front_end=FrontEnd(FrontEndKind.FX, "", example.notes)) if example.notes else g


def _exported(model: nn.Module, example: Example, name: str, probe: bool, why: str) -> ModelGraph:
    root = structural_copy(model)
    ep, notes = export_program(root, example.args, example.kwargs, name)
    gm, more = normalise(ep, root, name)
    given = _flat_inputs(ep, example, name)
    inputs = tuple(given.values())
    g = lift_graph(gm, inputs, name, probe=probe)
    return replace(g, front_end=FrontEnd(FrontEndKind.EXPORT, why,
                                         (*example.notes, *notes, *dynamic_dims(ep, given), *more)))


def _from_program(ep: ExportedProgram, example_inputs: ExampleInputs | None, name: str, probe: bool) -> ModelGraph:
    if example_inputs is None:
        if ep.example_inputs is None:
            raise TracingError(f"{name}: the program holds no example inputs; give example_inputs")
        args, kwargs = ep.example_inputs
        example = Example(tuple(args), dict(kwargs))
    else:
        example = Example.of(example_inputs)
    root = program_root(ep)
    gm, notes = normalise(ep, root, name)
    given = _flat_inputs(ep, example, name)
    g = lift_graph(gm, tuple(given.values()), name, probe=probe)
    return replace(g, front_end=FrontEnd(FrontEndKind.EXPORT, "given an ExportedProgram",
                                         (*dynamic_dims(ep, given), *notes)))


def _flat_inputs(ep: ExportedProgram, example: Example, name: str) -> dict[str, torch.Tensor]:
    """The example's tensors by the names of the program's input placeholders (its constants left out)."""
    spec = ep.call_spec.in_spec
    keys = list(spec.children()[1].context) if spec is not None and spec.num_children == 2 else list(example.kwargs)
    missing = [k for k in keys if k not in example.kwargs]
    if missing or set(example.kwargs) - set(keys):
        raise TracingError(f"{name}: the example's keyword inputs ({', '.join(example.kwargs) or 'none'}) are not "
                           f"the program's ({', '.join(keys) or 'none'})")
    leaves, _ = torch.utils._pytree.tree_flatten((example.args, {k: example.kwargs[k] for k in keys}))
    nodes = user_inputs(ep)
    if len(leaves) != len(nodes):
        raise TracingError(f"{name}: the example has {len(leaves)} inputs, the program takes {len(nodes)}")
    return {n.name: x for n, x in zip(nodes, leaves, strict=True) if isinstance(n.meta.get("val"), torch.Tensor)}


def _ordered(example: Example, root: nn.Module, names: Sequence[str], name: str) -> tuple[torch.Tensor, ...]:
    """The example's tensors in the order of the graph's placeholders."""
    if not example.keyword:
        return tuple(example.args)
    named = example.named(root.forward, name)
    missing = [n for n in names if n not in named]
    if missing:
        raise TracingError(f"{name}: the graph takes {', '.join(names)}; the example inputs do not give "
                           f"{', '.join(missing)}")
    return tuple(named[n] for n in names)


def _explain(name: str, exc: Exception, model: nn.Module) -> tuple[str, str]:
    """Name the user's line that fx could not trace (never torch's or hetsurgery's own) and say what to do;
    and the cause on one line."""
    frame_info = None
    tb = exc.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith((_TORCH_DIR, _OWN_DIR)):
            frame_info = tb
        tb = tb.tb_next
    if frame_info is not None:
        summary = traceback.extract_tb(frame_info, limit=1)[0]
        owner = frame_info.tb_frame.f_locals.get("self")
        owner_name = f" of {type(owner).__name__}" if isinstance(owner, nn.Module) else ""
        at = f" in {summary.name}{owner_name} ({summary.filename}:{summary.lineno})"
        where = f"{at}: `{(summary.line or '').strip()}`"
    else:  # no line of the model ran: fx failed on its forward itself (a decorator fx cannot read through)
        at = where = f" at the forward of {type(model).__name__}{_forward_at(model)}"
    message = (f"{name}: torch.fx cannot trace the model{where}. {type(exc).__name__}: {exc}\n"
               "Control flow or Python calls that depend on tensor values cannot be traced. Either pass "
               "leaf_modules=(TheModuleClass,) or leaf_modules=('qualified.name',) to keep the module containing "
               "it opaque (its channels are then frozen), or fix the deciding input with "
               "concrete_args={'arg_name': value}, or trace with frontend='export'.")
    return message, one_line(f"{type(exc).__name__}: {exc}") + at


def _forward_at(model: nn.Module) -> str:
    forward = inspect.unwrap(type(model).forward)
    try:
        return f" ({inspect.getsourcefile(forward)}:{inspect.getsourcelines(forward)[1]})"
    except (OSError, TypeError):
        return ""
