"""Whether a model can be saved as a package, asked before any work instead of found out when saving.

A package records every layer by its ``torch.nn`` class and every function by name from an allow-list
(``graph.json``), and writes ``model.py``, which may import only torch and the standard library. A forward
that calls ``math.sqrt`` or a layer of the user's own class passes tracing and merging, and only saving
would refuse it; ``why_not_saveable`` says so up front, from the same code that saving runs.

>>> import math, torch, hetsurgery as hs
>>> class Scaled(torch.nn.Module):
...     def forward(self, x):
...         return x / math.sqrt(x.shape[-1])
>>> why_not_saveable(hs.trace(hs.zoo.mlp([8]), torch.randn(2, 64))) is None
True
>>> print(why_not_saveable(hs.trace(Scaled(), torch.randn(2, 4))))  # doctest: +ELLIPSIS
node 'sqrt' calls math.sqrt, which a package cannot record: ...
"""

from __future__ import annotations

from hetsurgery.errors import ExportError
from hetsurgery.export.codegen import layout_of, model_source
from hetsurgery.export.graph_data import graph_document
from hetsurgery.ir import ModelGraph
from hetsurgery.ir.lowering import to_module


def why_not_saveable(g: ModelGraph) -> str | None:
    """Why ``hetsurgery.export.save`` would refuse ``g`` (``None``: it would not), without writing anything."""
    gm = to_module(g, share=True)
    try:
        layout = layout_of(gm)
        graph_document(gm, layout, [])
        model_source(gm, layout, [], g.name)
    except ExportError as exc:
        return str(exc)
    return None
