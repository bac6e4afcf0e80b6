"""The equivariance probe: an op no rule knows, run again on its example input with the channels permuted.

Before an unknown op freezes what it touches, ``probe`` runs it on the input it had on the example (recorded
by shape propagation, in eval mode) with the channels reordered by two random permutations. When every
output is the original output reordered the same way (within 1e-6 relative), the op commutes with the
group's permutations on that example and the channels pass through; the group's label says "probed".

The probe refuses, and the op freezes, unless: the op has one tracked input (a channel axis, no heads or
pieces) and every other input depends on no group; its output is one tensor of that input's shape; a
module has no parameters or buffers (state a permutation would have to move); running it draws no random
numbers, changes no input (no in-place update) and gives the same output twice. It proves equivariance on
the example, not in general: an op that mixes channels only for some inputs can pass; ``trace(...,
probe=False)`` turns probing off. Padding a probed group is refused (the op's value on zero channels is
unknown).

>>> import torch, hetsurgery as hs
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = torch.nn.Linear(3, 6), torch.nn.Linear(6, 2)
...     def forward(self, x):
...         return self.b(torch.special.expit(self.a(x)))   # no rule knows torch.special.expit
>>> g = hs.trace(Net(), torch.randn(4, 3))
>>> g.groups[0].perm_ok, "probed" in g.groups[0].label, g.groups[0].pad_ok
(True, True, False)
>>> hs.trace(Net(), torch.randn(4, 3), probe=False).groups[0].perm_ok
False
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import fx

from hetsurgery.tracing.lifter import Lifter
from hetsurgery.tracing.rules.args import describe, shape
from hetsurgery.tracing.shapes import Arguments
from hetsurgery.tracing.values import Chan, Free, Value, vars_of

TOLERANCE = 1e-6  # relative to the output's largest magnitude
TRIALS = 2  # random permutations tried


def probe(lx: Lifter, node: fx.Node) -> tuple[Value | None, str]:
    """The node's value when the probe passes it, else ``None`` and why not."""
    if lx.probes is None or node not in lx.probes:
        return None, "not probed"
    inputs = {n: lx.env[n] for n in node.all_input_nodes}
    tracked = [(n, v) for n, v in inputs.items() if not isinstance(v, Free)]
    if len(tracked) != 1 or not isinstance(tracked[0][1], Chan):
        return None, "it reads more than one channel axis, heads, pieces or parameters"
    src, x = tracked[0]
    assert isinstance(x, Chan)
    if shape(node) is None or shape(node) != shape(src):
        return None, "its output is not one tensor of its input's shape"
    if node.op == "call_module":
        mod = lx.modules[str(node.target)]
        if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
            return None, "the module holds parameters or buffers"
    why = _equivariant(lx, node, src, x, lx.probes[node])
    if why:
        return None, why
    lx.note(vars_of(x), f"probed {describe(node, lx)}")
    lx.block_pad(vars_of(x), f"probed op at node {node.name}: its value on zero-padded channels is unknown")
    return x, ""


def _equivariant(lx: Lifter, node: fx.Node, src: fx.Node, x: Chan, recorded: Arguments) -> str:
    """"" when the op commutes with random permutations of ``x``'s channels on the recorded input, else why not."""
    given = _input_value(node, src, recorded)
    if not isinstance(given, torch.Tensor):
        return "its input was not recorded"
    try:
        state = torch.get_rng_state()
        first = _run(lx, node, src, recorded, given.clone())
        if not torch.equal(state, torch.get_rng_state()):
            return "it draws random numbers"
        copy = given.clone()
        second = _run(lx, node, src, recorded, copy)
        if not torch.equal(copy, given):
            return "it changes its input in place"
        if not isinstance(first, torch.Tensor) or not _same(first, second, exact=True):
            return "it does not give the same output twice"
        gen = torch.Generator().manual_seed(0)
        for _ in range(TRIALS):
            index = _shuffled_positions(x, given.shape[x.dim], gen)
            out = _run(lx, node, src, recorded, given.index_select(x.dim, index))
            if not isinstance(out, torch.Tensor) or not _same(first.index_select(x.dim, index), out, exact=False):
                return "its output does not follow a permutation of the channels"
    except Exception as exc:  # the op refuses the permuted input: it is not a channel-wise op
        return f"it fails on permuted channels ({type(exc).__name__})"
    return ""


def _shuffled_positions(x: Chan, width: int, gen: torch.Generator) -> torch.Tensor:
    """Indices along the channel axis that reorder every segment's channels by a random permutation."""
    index = torch.arange(width)
    for seg, at in x.offsets():
        perm = torch.randperm(seg.size, generator=gen)
        pos = torch.as_tensor(list(seg.positions(at))).view(seg.size, seg.inner)
        index[pos.reshape(-1)] = pos[perm].reshape(-1)
    return index


def _input_value(node: fx.Node, src: fx.Node, recorded: Arguments) -> Any:
    found: list[Any] = []
    _walk((node.args, node.kwargs), recorded, lambda a, v: found.append(v) if a is src else None)
    return found[0] if found else None


def _run(lx: Lifter, node: fx.Node, src: fx.Node, recorded: Arguments, new: torch.Tensor) -> Any:
    """The node run on its recorded arguments, ``src``'s value replaced by ``new`` (eval mode, no grad)."""
    args, kwargs = _replace((node.args, node.kwargs), recorded, src, new)
    with torch.no_grad():
        if node.op == "call_function":
            return cast(Callable[..., Any], node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        mod = lx.modules[str(node.target)]
        was = mod.training
        try:
            mod.eval()
            return mod(*args, **kwargs)
        finally:
            mod.train(was)


def _replace(structure: Any, values: Any, src: fx.Node, new: torch.Tensor) -> Any:
    """``values`` (laid out like ``structure``) with a copy of every other tensor and ``new`` where ``src`` is."""
    if structure is src:
        return new
    if isinstance(structure, (list, tuple)):
        return type(values)(_replace(s, v, src, new) for s, v in zip(structure, values, strict=True))
    if isinstance(structure, dict):
        return {k: _replace(structure[k], values[k], src, new) for k in structure}
    return values.clone() if isinstance(values, torch.Tensor) else values


def _walk(structure: Any, values: Any, visit: Any) -> None:
    visit(structure, values)
    if isinstance(structure, (list, tuple)):
        for s, v in zip(structure, values, strict=True):
            _walk(s, v, visit)
    elif isinstance(structure, dict):
        for k in structure:
            _walk(structure[k], values[k], visit)


def _same(want: torch.Tensor, got: torch.Tensor, exact: bool) -> bool:
    if want.shape != got.shape or want.dtype != got.dtype:
        return False
    if exact or not (want.is_floating_point() or want.is_complex()):
        return bool(torch.equal(want, got)) or bool(torch.equal(want.isnan(), got.isnan()) and
                                                     torch.equal(want.nan_to_num(), got.nan_to_num()))
    scale = float(want.abs().max()) if want.numel() else 0.0
    return bool((want - got).abs().max() <= TOLERANCE * max(scale, 1e-30)) if want.numel() else True
