"""Which folders are packages, and which files a package folder may hold.

A folder is a package only when it carries our marker — a ``plan.json`` whose ``"format"`` starts with
``hetsurgery-plan/`` and a ``model.py`` that starts with the generated header — and holds nothing but
package files, every one a regular file (no symbolic link, no folder of that name):

- written by ``save``: ``model.py``, ``model.safetensors``, ``graph.json``, ``plan.json``, ``report.md``
  (packages written before ``graph.json`` existed lack it);
- written into a package by our commands: ``model.onnx`` and its external-data file ``model.onnx.data``
  (``hetsurgery export``), ``graph.EXT`` and ``plan-group-N.EXT`` with ``EXT`` one of ``svg``, ``png``,
  ``gv``, ``dot`` (``hetsurgery render``), and ``depth-plan.EXT`` and ``cka.EXT`` (``render --depth``,
  ``--cka``);
- ``__pycache__/`` holding only Python's byte code of ``model.py`` (``model.*.pyc``), written when
  ``model.py`` is imported.

``save`` replaces a package and writes into an empty folder; anything else is refused, so a folder of
someone's files is never deleted.

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("model.py", "model.safetensors", "train.py"):
...     _ = (folder / name).write_text("")
>>> is_package(folder), foreign_entries(folder)
(False, ['train.py'])
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from hetsurgery.export.codegen import is_generated_model_py

SAVED_FILES = ("model.py", "model.safetensors", "graph.json", "plan.json", "report.md")
HASHED_FILES = ("model.py", "model.safetensors", "graph.json")  # plan.json records their SHA-256
ADDED_FILES = ("model.onnx", "model.onnx.data")
PICTURE = re.compile(r"(graph|plan-group-[0-9]+|depth-plan|cka)\.(svg|png|gv|dot)")
BYTECODE_FOLDER = "__pycache__"
BYTECODE = re.compile(r"model\.[A-Za-z0-9_.-]+\.pyc")
PLAN_FORMAT_PREFIX = "hetsurgery-plan/"
_HEADER_BYTES = 4096  # the generated header is the first three lines of model.py


def is_package(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a hetsurgery package (see the module docstring)."""
    return not_a_package(folder) is None


def not_a_package(folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` is not a package (``"it lacks plan.json"``), or ``None`` when it is one."""
    folder = Path(folder)
    if not folder.is_dir():
        return "it does not exist" if not folder.exists() else "it is not a folder"
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        return f"it holds files that are not package files: {shown}"
    if not (folder / "plan.json").is_file():
        return "it lacks plan.json"
    if not _has_plan_format(folder / "plan.json"):
        return f'its plan.json has no "format": "{PLAN_FORMAT_PREFIX}..." key'
    if not (folder / "model.py").is_file():
        return "it lacks model.py"
    with (folder / "model.py").open("rb") as code:
        head = code.read(_HEADER_BYTES).decode("utf-8", errors="replace")
    if not is_generated_model_py(head):
        return "its model.py does not start with the header hetsurgery.export.save writes"
    return None


def foreign_entries(folder: Path) -> list[str]:
    """The entries of ``folder`` that a package does not hold, sorted; folders end with ``/``."""
    foreign = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and entry.name == BYTECODE_FOLDER:
                foreign += [f"{entry.name}/{name}" for name in _foreign_bytecode(Path(entry.path))]
            elif not (entry.is_file(follow_symlinks=False) and _package_file(entry.name)):
                foreign.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    return sorted(foreign)


def is_added_file(name: str) -> bool:
    """Whether our commands may add a file of this name to a package (``model.onnx``, ``graph.svg``, ...)."""
    return name in ADDED_FILES or PICTURE.fullmatch(name) is not None


def _package_file(name: str) -> bool:
    return name in SAVED_FILES or is_added_file(name)


def _foreign_bytecode(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return [e.name for e in entries if not (e.is_file(follow_symlinks=False) and BYTECODE.fullmatch(e.name))]


def _has_plan_format(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(raw, dict) and isinstance(raw.get("format"), str) and raw["format"].startswith(PLAN_FORMAT_PREFIX)
