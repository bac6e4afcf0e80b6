"""Writing a checkpoint shard by shard: each tensor is made when its turn comes and written at once.

The names, dtypes and shapes of every output tensor are known before any value is (the output's structure is a
graph on the meta device), so the shards are laid out first: tensors in order, a new shard when the next tensor
would pass ``shard_bytes``. Each shard's safetensors header (tensor, dtype, shape, byte offsets) is then written,
followed by its tensors one by one as ``make(name)`` returns them; more than one shard gets a
``model.safetensors.index.json`` as ``save_pretrained`` writes it. Nothing but the tensor being written is held.
The files go into a folder the caller commits (``export.atomic.atomic_folder``), so a failure leaves nothing.

>>> import pathlib, tempfile, torch
>>> from hetsurgery.stream.checkpoint import Checkpoint
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> layout = Layout.of([("a", torch.float32, (2, 3)), ("b", torch.bfloat16, (4,))], shard_bytes=16)
>>> [len(s) for s in layout.shards]
[1, 1]
>>> _ = layout.write(folder, lambda name: torch.ones(2, 3) if name == "a" else torch.zeros(4, dtype=torch.bfloat16))
>>> sorted(p.name for p in folder.iterdir())
['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
>>> Checkpoint.open(folder).read("a").sum().item()
6.0
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hetsurgery.errors import HetsurgeryError
from hetsurgery.stream.checkpoint import DTYPES, INDEX, SINGLE

Spec = tuple[str, torch.dtype, tuple[int, ...]]
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
SHARD_BYTES = 2 * 2**30  # per output shard (save_pretrained's default is 5 GB)


def _nbytes(spec: Spec) -> int:
    n = spec[1].itemsize
    for d in spec[2]:
        n *= d
    return n


@dataclass(frozen=True)
class Layout:
    """Which output tensors go into which shard, in order."""

    shards: tuple[tuple[Spec, ...], ...]

    @staticmethod
    def of(specs: Sequence[Spec], *, shard_bytes: int = SHARD_BYTES) -> Layout:
        shards: list[list[Spec]] = [[]]
        used = 0
        for spec in specs:
            size = _nbytes(spec)
            if shards[-1] and used + size > shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(spec)
            used += size
        return Layout(tuple(tuple(s) for s in shards if s))

    def names(self) -> list[str]:
        return [spec[0] for shard in self.shards for spec in shard]

    def file(self, i: int) -> str:
        return SINGLE if len(self.shards) == 1 else f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"

    def write(self, folder: Path, make: Callable[[str], torch.Tensor], *, progress: bool = False) -> list[Path]:
        """Write every shard into ``folder``, asking ``make`` for each tensor in turn; the files written."""
        written = []
        with tqdm(total=sum(len(s) for s in self.shards), desc="writing", unit="tensor", disable=not progress,
                  leave=False) as bar:
            for i, shard in enumerate(self.shards):
                written.append(self._write_shard(folder / self.file(i), shard, make, bar))
        if len(self.shards) > 1:
            weight_map = {spec[0]: self.file(i) for i, shard in enumerate(self.shards) for spec in shard}
            total = sum(_nbytes(spec) for shard in self.shards for spec in shard)
            (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                   indent=2) + "\n")
            written.append(folder / INDEX)
        return written

    @staticmethod
    def _write_shard(path: Path, shard: Sequence[Spec], make: Callable[[str], torch.Tensor], bar: tqdm) -> Path:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape in shard:
            end = offset + _nbytes((name, dtype, shape))
            header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        with path.open("wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name, dtype, shape in shard:
                t = make(name)
                if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise HetsurgeryError(f"{name}: made a {t.dtype} tensor of shape {tuple(t.shape)}, the layout "
                                          f"says {dtype} {tuple(shape)}")
                f.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
                del t
                bar.update(1)
        return path
