"""Integrity of a package: SHA-256 digests of its files, recorded in ``plan.json`` and checked on loading,
and finite weights.

>>> digest(b"x = 1")[:19]
'sha256:8ff436def145'
>>> check_digest(Path("pkg"), "model.py", digest(b"x = 1"), {"model.py": digest(b"x = 1")})
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from hetsurgery.export.errors import InputError

PREFIX = "sha256:"
_WRITE_AGAIN = ("Write the package again (hetsurgery.export.save or `hetsurgery merge CONFIG.yaml -o FOLDER`) from "
                "the model it was written from.")


def digest(data: bytes) -> str:
    """``sha256:<64 hex digits>`` of ``data``."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    """``sha256:<64 hex digits>`` of the file at ``path``, read in chunks."""
    with path.open("rb") as f:
        return PREFIX + hashlib.file_digest(f, "sha256").hexdigest()


def check_digest(folder: Path, name: str, actual: str, recorded: Mapping[str, object]) -> None:
    """``InputError`` naming ``folder/name`` when ``actual`` is not the digest ``plan.json`` records for it."""
    want = recorded.get(name)
    if want is None:
        raise InputError(f"{folder}: plan.json records no SHA-256 for {name}; the package was changed after it "
                         f"was written. {_WRITE_AGAIN}")
    if actual != want:
        raise InputError(f"{folder / name} was changed after the package was written: its SHA-256 is not the one "
                         f"plan.json records. {_WRITE_AGAIN}")


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """``InputError`` naming the first floating tensor that holds NaN or Inf values."""
    for name, t in tensors.items():
        if not (t.is_floating_point() or t.is_complex()):
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise InputError(f"{where}: tensor {name!r} holds {bad} NaN or Inf value{'s' * (bad > 1)} of "
                             f"{t.numel()}; a model with non-finite weights computes nothing useful. Train or merge "
                             "it again, or replace those values, and write the package again.")
