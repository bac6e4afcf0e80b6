"""Parameter values that are read when asked for, and read a block of rows at a time.

A mapping of parameter values by name may be *lazy*: besides ``values[name]`` (the whole tensor) it has
``rows(name, (start, stop))`` (rows ``start:stop`` of the first dim, read alone) and ``shape(name)`` (known without
reading anything; ``None`` for a tensor that is better read whole: a view over a mapping that is not lazy, rows
that padding adds). A streamed model's values are (``stream.model.Values``), and so are the views made of them
(``merging.methods.learned``, ``passes.pad_width.padded_view``). Work that goes through a large tensor piece by
piece (weight matching's scores and objective) then reads each piece from the checkpoint instead of the whole
tensor: a 32000 x 2048 embedding is a block of rows in memory at a time, not 131 MB per model.

>>> import torch
>>> values = {"w": torch.arange(6.0).reshape(3, 2)}
>>> is_lazy(values), read_rows(values, "w", (1, 3)).tolist()
(False, [[2.0, 3.0], [4.0, 5.0]])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def is_lazy(values: Mapping[str, torch.Tensor]) -> bool:
    """``values`` reads rows and gives shapes without reading the tensor."""
    return callable(getattr(values, "rows", None)) and callable(getattr(values, "shape", None))


def read_rows(values: Mapping[str, torch.Tensor], name: str, rows: tuple[int, int]) -> torch.Tensor:
    """Rows ``rows[0]:rows[1]`` of ``values[name]``: read alone from a lazy mapping, sliced from the tensor otherwise."""
    if is_lazy(values):
        return values.rows(name, rows)  # type: ignore[attr-defined]
    return values[name][rows[0]:rows[1]]


def shape_of(values: Mapping[str, torch.Tensor], name: str) -> torch.Size | None:
    """``values[name]``'s shape when a lazy mapping reads it by rows; ``None`` otherwise (read it whole)."""
    shape = values.shape(name) if is_lazy(values) else None  # type: ignore[attr-defined]
    return None if shape is None else torch.Size(shape)
