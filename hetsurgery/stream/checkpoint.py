"""A checkpoint on disk read lazily: which tensors its safetensors shards hold, and one tensor (or rows of one) on
demand, never all at once.

``Checkpoint.open`` takes a Hugging Face folder (``model.safetensors``, or shards listed by
``model.safetensors.index.json``), an index file, or one ``.safetensors`` file. It reads every shard's header and
checks, before any work, that each shard the index lists exists and is as long as its header says: a missing or
truncated shard is a one-line ``InputError`` naming the file. Tensors are read through ``safetensors.safe_open``,
one file opened per read and closed after it: the pages a read maps are released with it, so reading a checkpoint
tensor by tensor never holds more than the tensors being used.

>>> import pathlib, tempfile, torch, safetensors.torch
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> safetensors.torch.save_file({"w": torch.arange(6.).reshape(3, 2)}, folder / "model.safetensors")
>>> ckpt = Checkpoint.open(folder)
>>> ckpt.shape("w"), ckpt.read("w", rows=(1, 3)).tolist()
((3, 2), [[2.0, 3.0], [4.0, 5.0]])
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from hetsurgery.export.errors import InputError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES: Mapping[str, torch.dtype] = MappingProxyType({
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
})
_HEADER_LIMIT = 100 * 2**20  # safetensors' own bound on a header


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies: its file, dtype and shape."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Checkpoint:
    """The tensors of a safetensors checkpoint by name (``entries``), the folder it lies in and its ``config.json``
    (``None`` when there is none), read on demand."""

    path: Path
    folder: Path
    entries: Mapping[str, Entry]
    config: Mapping[str, Any] | None

    @staticmethod
    def open(path: str | os.PathLike[str]) -> Checkpoint:
        """Read the index and every shard's header; ``InputError`` naming the file for anything missing or cut short."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"checkpoint {path} does not exist; give a Hugging Face model folder, its "
                             f"{INDEX} or a .safetensors file")
        if path.is_dir():
            folder = path
            files = _listed(path / INDEX) if (path / INDEX).is_file() else \
                {SINGLE: None} if (path / SINGLE).is_file() else None
            if files is None:
                raise InputError(f"{path} holds no {SINGLE} and no {INDEX}; save the model with "
                                 "save_pretrained(..., safe_serialization=True)")
        elif path.name.endswith(".index.json"):
            folder, files = path.parent, _listed(path)
        elif path.suffix == ".safetensors":
            folder, files = path.parent, {path.name: None}
        else:
            raise InputError(f"{path} is not a safetensors checkpoint: give a model folder, its {INDEX} or a "
                             ".safetensors file")
        entries: dict[str, Entry] = {}
        for name, listed in files.items():
            file = folder / name
            if not file.is_file():
                raise InputError(f"{file} is missing: {path} lists it as a shard; copy or download it again")
            header = _header(file)
            for key in listed or ():
                if key not in header:
                    raise InputError(f"{file} lacks tensor {key}, which the index {path} places there; the index and "
                                     "the shards do not belong together: save the checkpoint again")
            for key, entry in header.items():
                if listed is None or key in listed:
                    entries[key] = entry
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else None
        return Checkpoint(path, folder, MappingProxyType(entries), None if config is None else MappingProxyType(config))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name).dtype

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def read(self, name: str, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
             rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``name`` (rows ``start:stop`` of its first dim, when given) as a new tensor of ``dtype`` on
        ``device``; the file is closed again, so nothing of it stays mapped."""
        from safetensors import safe_open

        entry = self._entry(name)
        try:
            with safe_open(str(entry.file), framework="pt", device="cpu") as f:
                t = f.get_tensor(name) if rows is None else f.get_slice(name)[rows[0]:rows[1]]
                return t.to(dtype=dtype or t.dtype, device=device or "cpu", copy=True)
        except OSError as exc:
            raise InputError(f"cannot read {name} from {entry.file}: {exc}") from exc

    def _entry(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise InputError(f"{self.path} holds no tensor {name}")
        return entry


def _listed(index: Path) -> dict[str, set[str]]:
    """Shard file -> the tensors the index places in it."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{index} is not a safetensors index (a JSON object with a weight_map): {exc}") from exc
    files: dict[str, set[str]] = {}
    for key, file in weight_map.items():
        files.setdefault(str(file), set()).add(key)
    return files


def _header(file: Path) -> dict[str, Entry]:
    """The tensors ``file``'s header lists; ``InputError`` when the file is shorter than the header says."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(_HEADER_LIMIT, size - 8):
            raise InputError(f"{file} is truncated or not a safetensors file ({size} bytes); copy or download it again")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise InputError(f"{file} has a damaged header ({exc}); copy or download it again") from exc
    out, end = {}, 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise InputError(f"{file}: tensor {key} has dtype {info.get('dtype')}, which hetsurgery does not read")
        out[key] = Entry(file, dtype, tuple(int(d) for d in info["shape"]))
        end = max(end, int(info["data_offsets"][1]))
    if size < 8 + n + end:
        raise InputError(f"{file} is truncated: {size} bytes, its header needs {8 + n + end}; copy or download it "
                         "again")
    return out
