"""Check that models share a topology: the same groups with the same slots (widths may differ)."""

from __future__ import annotations

from collections.abc import Sequence

from hetsurgery.errors import MergeInputError
from hetsurgery.ir import ModelGraph

DEPTH_HINT = ("merging needs the same layers in every model; models of different depth need depth alignment, "
              "which this version does not have")


def check_same_topology(graphs: Sequence[ModelGraph], *, equal_widths: bool) -> None:
    ref = graphs[0]
    for g in graphs[1:]:
        out_a, out_b = _output_shape(ref), _output_shape(g)
        if out_a != out_b:
            raise MergeInputError(f"{ref.name} outputs shape {out_a} but {g.name} outputs {out_b}")
        if len(g.groups) != len(ref.groups):
            raise MergeInputError(f"{g.name} has {len(g.groups)} permutation groups but {ref.name} has "
                             f"{len(ref.groups)}: the models differ in topology ({DEPTH_HINT})")
        for a, b in zip(ref.groups, g.groups, strict=True):
            sig_a = sorted((s.param, s.dim, s.role.value, s.chunks) for s in a.slots)
            sig_b = sorted((s.param, s.dim, s.role.value, s.chunks) for s in b.slots)
            if sig_a != sig_b:
                raise MergeInputError(f"group {a.id} ({a.label}) differs between {ref.name} and {g.name}: "
                                 f"{sorted(set(sig_a) ^ set(sig_b))[:3]} ({DEPTH_HINT})")
            if a.size != b.size and (equal_widths or not a.perm_ok):
                why = "is frozen" if not a.perm_ok else "needs equal widths for this method (use zip, ot or mal)"
                raise MergeInputError(f"group {a.id} ({a.label}) has width {a.size} in {ref.name} and {b.size} in "
                                 f"{g.name}; it {why}")


def _output_shape(g: ModelGraph) -> object:
    out = next(n for n in g.module.graph.nodes if n.op == "output")
    arg = out.args[0]
    meta = getattr(arg, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
