"""Streamed merges and surgery: checkpoints in, a checkpoint out, one block (or one tensor) in memory at a time.

``merge(paths, data, out, method=...)`` traces each checkpoint's model on the meta device (``StreamedModel``), plans
exactly as ``hetsurgery.merge`` plans (``merging.driver.plan_traced``: statistics block by block through
``Segmented``, weight matching reading each tensor when it needs it), then writes the merged model shard by shard:
each output tensor is ``Combination.parameter`` of the models' tensors, read one tensor (or, for the largest, a
block of rows) at a time. ``apply(path, passes, out)`` runs structural passes on the graph and writes each tensor of
the result from the checkpoint tensor it copies (``provenance``). The output is a Hugging Face folder
(``config.json`` and safetensors shards with an index) that ``from_pretrained`` loads; it is built in a hidden
folder and put in place at the end (``export.atomic``), so a failure leaves nothing.

Models of one architecture merged by ``average`` need no graph (every map is the identity): their tensor names,
shapes and configs are checked instead.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from hetsurgery.errors import MergeInputError
from hetsurgery.export.atomic import atomic_folder
from hetsurgery.export.outputs import check_folder
from hetsurgery.export.pretrained import saved_names, to_pretrained
from hetsurgery.ir import ModelGraph, Role, Slot, SlotMaps, slots_by_param
from hetsurgery.memory import release_free_memory
from hetsurgery.merging.combine import Combination
from hetsurgery.merging.driver import STAGES, plan_traced
from hetsurgery.merging.inputs import default_device, first_batch
from hetsurgery.merging.methods import METHODS
from hetsurgery.merging.options import MergeOptions
from hetsurgery.passes import MapGroups, Pipeline
from hetsurgery.plan.distributed import join
from hetsurgery.plan.width_plan import WidthPlan
from hetsurgery.stream.checkpoint import Checkpoint
from hetsurgery.stream.model import StreamedModel, Values, structure_config
from hetsurgery.stream.provenance import Copy, Source, chained, check_streamable, provenance
from hetsurgery.stream.segments import SEGMENT_BYTES, Segmented
from hetsurgery.stream.writer import SHARD_BYTES, Layout, Spec

CHUNK = 1 << 22  # elements (16 MB in float32): larger tensors are merged a block of rows at a time


@dataclass(frozen=True)
class StreamResult:
    """Where the output went (``None`` on the ranks other than 0), the width plan of a merge, seconds per stage."""

    path: Path | None
    plan: WidthPlan | None
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        times = "  ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items() if v)
        return f"wrote {self.path}: {times}  (total {sum(self.seconds.values()):.2f}s)"


def merge(models: Sequence[str | os.PathLike[str] | Checkpoint], data: Iterable | None, out: str | os.PathLike[str],
          options: MergeOptions | None = None, *, dtype: torch.dtype | None = None, shard_bytes: int = SHARD_BYTES,
          segment_bytes: int = SEGMENT_BYTES, **keywords: Any) -> StreamResult:
    """Merge the checkpoints ``models`` into a checkpoint at ``out``, streamed; ``options`` (or keywords) as for
    ``hetsurgery.merge`` (``depth`` aside: the models have one depth; ``repair`` aside: a streamed merge writes the
    combined weights unrepaired, as ``hs.merge(..., repair=False)`` does, since REPAIR runs the merged model whole
    over the data). ``dtype`` is the output's (default: each
    tensor's as the anchor stores it); statistics and sums run in float32 on ``device``. ``distributed``: as for
    ``merge``, rank 0 plans and writes."""
    o = MergeOptions.given(options, keywords)
    if o.depth is not None:
        raise MergeInputError("streamed merges keep the models' depth: depth= is for hs.merge, in memory")
    if o.repair:
        raise MergeInputError("streamed merges write the combined weights unrepaired: repair= is for hs.merge, in "
                              "memory (run hs.merge(..., repair=True) on a model that fits, or leave repair unset)")
    out = Path(out)
    check_folder(out)
    seconds = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter()
    ckpts = [m if isinstance(m, Checkpoint) else Checkpoint.open(m) for m in models]
    if len(ckpts) < 2:
        raise MergeInputError(f"merge needs at least two models, got {len(ckpts)}")
    device = default_device(o.device)
    world = join(o.distributed, device)
    if not world.leader:  # one progress bar, rank 0's
        o = replace(o, progress=False)
    if o.method == "average" and _one_architecture(ckpts):
        seconds["trace"] = time.perf_counter() - clock
        return _average(ckpts, o, out, dtype, shard_bytes, seconds) if world.leader else StreamResult(None, None)
    if o.method == "ot" and o.method_options.get("cost") == "weights":
        raise MergeInputError("streamed merges run ot on activations; cost='weights' is for hs.merge, in memory")
    if METHODS[o.method].wants_data(o.method_options) and data is None:
        raise MergeInputError(f"method {o.method!r} needs calibration data")
    example = o.example_inputs if o.example_inputs is not None else first_batch(data) if data is not None else None
    names = o.names or tuple(c.folder.name for c in ckpts)
    streamed: list[StreamedModel] = []
    for ckpt, n in zip(ckpts, names, strict=True):  # models of one config are traced once
        streamed.append(StreamedModel.open(ckpt, example, name=n, like_model=streamed[0] if streamed else None))
    graphs = [m.graph for m in streamed]
    values = [m.values(torch.float32, device) for m in streamed]
    seconds["trace"] = time.perf_counter() - clock
    read = [m.values(None, device) for m in streamed] if METHODS[o.method].weights_as_stored else values
    gc.collect()  # what tracing left (the example run's tensors), given back before the statistics and the matching
    release_free_memory()
    planned = plan_traced(graphs, data, o, seconds, values=read, runner=Segmented(graphs, values, segment_bytes))
    if not world.leader:
        return StreamResult(None, planned.plan, seconds)
    clock = time.perf_counter()
    c = Combination.of(graphs, planned.plan)
    merged = Pipeline((c.carry[c.anchor],))(graphs[c.anchor])  # the merged structure, on meta
    anchor = streamed[c.anchor]

    def make(name: str, out_dtype: torch.dtype) -> torch.Tensor:
        release_free_memory()  # what the last tensor's copies left in the C heap, given back before the next
        return _combined(c, graphs, values, merged, name, out_dtype)

    _write(merged, anchor, make, out, dtype, shard_bytes, o.progress)
    seconds["combine"] = time.perf_counter() - clock
    return StreamResult(out, planned.plan, seconds)


def apply(model: str | os.PathLike[str] | Checkpoint, passes: Sequence[Any], out: str | os.PathLike[str], *,
          example_inputs: Any = None, dtype: torch.dtype | None = None, shard_bytes: int = SHARD_BYTES,
          progress: bool = True) -> StreamResult:
    """Structural surgery on a checkpoint, streamed: ``passes`` (``InsertZeroResidual``: block expansion;
    ``RemoveBlock``: layer slicing) run on its graph, and each tensor of the result is written from the checkpoint
    tensor it copies, or as zeros. ``dtype``: the output's (default: as stored)."""
    for p in passes:
        check_streamable(p)
    out = Path(out)
    check_folder(out)
    clock = time.perf_counter()
    m = StreamedModel.open(model, example_inputs, small=False)
    g = m.graph
    sources: dict[str, Source] = {name: Copy(name) for name in g.params}
    for p in passes:
        after = Pipeline((p,))(g)
        sources = chained(sources, provenance(g, after))
        g = after
    seconds = {"trace": time.perf_counter() - clock}
    clock = time.perf_counter()
    values = m.values(torch.float32)

    def make(name: str, out_dtype: torch.dtype) -> torch.Tensor:
        src = sources[name]
        if isinstance(src, Copy):
            key = m.keys.get(src.name)
            return m.checkpoint.read(key, dtype=out_dtype) if key is not None else values[src.name].to(out_dtype)
        return torch.zeros(g.params[name].shape, dtype=out_dtype)

    def stored(name: str) -> torch.dtype:
        src = sources[name]
        return m.dtype(src.name) if isinstance(src, Copy) else _float_dtype(m.checkpoint)

    _write(g, m, make, out, dtype, shard_bytes, progress, stored=stored)
    seconds["write"] = time.perf_counter() - clock
    return StreamResult(out, None, seconds)


def _float_dtype(ckpt: Checkpoint) -> torch.dtype:
    """The dtype the checkpoint stores its floating tensors in (the first one's)."""
    return next((e.dtype for e in ckpt.entries.values() if e.dtype.is_floating_point), torch.float32)


def _blocks(shape: tuple[int, ...]) -> list[tuple[int, int] | None]:
    """Blocks of rows of about ``CHUNK`` elements for a large tensor of ``shape``; ``[None]`` (whole) otherwise."""
    n = 1
    for d in shape:
        n *= d
    if len(shape) < 2 or n <= CHUNK:
        return [None]
    step = max(1, CHUNK // (n // shape[0]))
    return [(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def _write(g: ModelGraph, anchor: StreamedModel, make: Callable[[str, torch.dtype], torch.Tensor], out: Path,
           dtype: torch.dtype | None, shard_bytes: int, progress: bool,
           stored: Callable[[str], torch.dtype] | None = None) -> None:
    """``g``'s tensors, each made by ``make`` in the output dtype, as ``anchor``'s model class saves them: the class
    built from its config (``to_pretrained``: it checks every name and shape), config.json, the shards."""
    model: Any = to_pretrained(g, anchor.like)  # on meta: the config, the names and shapes the class builds
    graph_name = {saved: name for name, saved in saved_names(g).items()}
    seen: set[int] = set()
    specs: list[Spec] = []
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen or key not in graph_name:  # a tied copy, or a buffer the class computes
            continue
        seen.add(id(t))
        name = graph_name[key]
        specs.append((key, dtype or (stored or anchor.dtype)(name), tuple(t.shape)))
    layout = Layout.of(specs, shard_bytes=shard_bytes)
    if dtype is not None and hasattr(model.config, "dtype"):
        model.config.dtype = dtype
    with atomic_folder(out) as tmp:
        model.config.save_pretrained(tmp)
        by_key = {s[0]: s[1] for s in specs}
        layout.write(tmp, lambda key: make(graph_name[key], by_key[key]), progress=progress)


def _combined(c: Combination, graphs: Sequence[ModelGraph], values: Sequence[Values], merged: ModelGraph, name: str,
              out_dtype: torch.dtype) -> torch.Tensor:
    """The merged tensor ``name`` in ``out_dtype``: whole, or a block of rows at a time when it is large and its
    first axis is not moved (the vocabulary of an embedding, a frozen output)."""
    slots = [[(gid, s) for gid, s in slots_by_param(g.group(gid) for gid in c.carry[k].produce).get(name, ())]
             for k, g in enumerate(graphs)]
    shape = merged.params[name].shape
    rows = _row_blocks(c, graphs, slots, shape)
    if rows is None:
        return _piece(c, values, name, slots, [m for m in c.maps], None).to(out_dtype)
    result = torch.empty(shape, dtype=out_dtype)
    for a, b in rows:
        local = [_local(c.maps[k], slots[k], a, b) for k in range(len(graphs))]
        result[a:b] = _piece(c, values, name, [s for s, _ in local], [m for _, m in local], (a, b))
    return result


def _piece(c: Combination, values: Sequence[Values], name: str, slots: Sequence[list[tuple[int, Slot]]],
           maps: Sequence[SlotMaps], rows: tuple[int, int] | None) -> torch.Tensor:
    loaded: dict[int, torch.Tensor] = {}

    def own(k: int) -> torch.Tensor:
        if k not in loaded:
            loaded[k] = values[k].rows(name, rows)
        return loaded[k]

    return c.parameter(name, lambda k: MapGroups.carried(maps[k], own(k), slots[k]), own)


def _row_blocks(c: Combination, graphs: Sequence[ModelGraph], slots: Sequence[list[tuple[int, Slot]]],
                shape: torch.Size) -> list[tuple[int, int]] | None:
    """Blocks of rows to merge a tensor of (merged) ``shape`` by, or ``None`` (whole): for a tensor over ``CHUNK``
    elements whose first axis every model keeps in place (no slot there, or slots whose maps are identity
    permutations)."""
    blocks = _blocks(tuple(shape))
    if blocks == [None]:
        return None
    for k in range(len(graphs)):
        for gid, s in slots[k]:
            m = c.maps[k].maps[s.role].get(gid)
            if s.dim == 0 and m is not None and (not isinstance(m, tuple) or not s.packed or s.inner != 1 or
                                                 not torch.equal(m[0].cpu(), torch.arange(m[0].numel()))):
                return None
    return [b for b in blocks if b is not None]


def _local(maps: SlotMaps, slots: Sequence[tuple[int, Slot]], a: int, b: int
           ) -> tuple[list[tuple[int, Slot]], SlotMaps]:
    """The slots and maps of rows ``a:b``: a first-axis slot (an identity, maybe scaled) cut to the rows it covers."""
    produce = {gid: m for gid, m in maps.maps[Role.PRODUCE].items()}
    consume = {gid: m for gid, m in maps.maps[Role.CONSUME].items()}
    out = []
    for i, (gid, s) in enumerate(slots):
        if s.dim != 0:
            out.append((gid, s))
            continue
        if gid not in maps.maps[s.role]:
            continue  # not moved
        perm, scale = maps.maps[s.role][gid]  # type: ignore[misc]
        lo, hi = max(s.offset, a), min(s.offset + perm.numel(), b)
        if hi <= lo:
            continue
        local = -1 - i  # a group of its own: the rows of this slot in the block
        (produce if s.role is Role.PRODUCE else consume)[local] = (torch.arange(hi - lo), scale)
        (consume if s.role is Role.PRODUCE else produce)[local] = (torch.arange(hi - lo), 1.0)
        out.append((local, replace(s, offset=lo - a)))
    return out, SlotMaps(produce, consume)


def _one_architecture(ckpts: Sequence[Checkpoint]) -> bool:
    """The checkpoints hold tensors of the same names and shapes, and the same config (dtype aside)."""
    first = ckpts[0]
    return first.config is not None and all(
        structure_config(c) == structure_config(first) and {k: e.shape for k, e in c.entries.items()} ==
        {k: e.shape for k, e in first.entries.items()} for c in ckpts[1:])


def _average(ckpts: Sequence[Checkpoint], o: MergeOptions, out: Path, dtype: torch.dtype | None, shard_bytes: int,
             seconds: dict[str, float]) -> StreamResult:
    """``average`` of checkpoints of one architecture: ``Σ_k w_k W_k`` for every tensor, read a block of rows at a time
    for the largest; the anchor's config and names."""
    from hetsurgery.merging.inputs import merge_weights

    clock = time.perf_counter()
    w = merge_weights(o.weights, len(ckpts))
    anchor = ckpts[o.anchor]
    order = [o.anchor, *(k for k in range(len(ckpts)) if k != o.anchor)]  # Combination.parameter's order
    device = default_device(o.device)

    def summed(key: str, floating: bool, rows: tuple[int, int] | None) -> torch.Tensor:
        """``Σ_k w_k W_k`` summed as ``Combination.parameter`` sums (anchor first, in float32), into the first
        tensor read: every tensor read is a fresh copy, so none is copied again (a whole checkpoint's worth)."""
        if not floating:
            return ckpts[0].read(key, device=device, rows=rows)
        total = None
        for k in order:
            t = ckpts[k].read(key, dtype=torch.float32, device=device, rows=rows)
            if total is None:
                total = t if w[k] == 1.0 else t.mul_(w[k])
            else:
                total.add_(t, alpha=w[k])
            del t
        assert total is not None
        return total

    def make(key: str) -> torch.Tensor:
        e = anchor.entries[key]
        out_dtype = dtype or e.dtype
        rows = _blocks(e.shape)
        result = torch.empty(e.shape, dtype=out_dtype)
        for r in rows:
            piece = summed(key, e.dtype.is_floating_point, r).to(out_dtype).cpu()
            if r is None:
                return piece
            result[r[0]:r[1]] = piece
        return result

    specs = [(key, dtype or e.dtype, e.shape) for key, e in anchor.entries.items()]
    layout = Layout.of(specs, shard_bytes=shard_bytes)
    with atomic_folder(out) as tmp:
        _copy_config(anchor, tmp, dtype)
        layout.write(tmp, make, progress=o.progress)
    seconds["combine"] = time.perf_counter() - clock
    return StreamResult(out, None, seconds)


def _copy_config(ckpt: Checkpoint, folder: Path, dtype: torch.dtype | None) -> None:
    import json

    config = dict(ckpt.config or {})
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
