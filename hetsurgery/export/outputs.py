"""Where hetsurgery may write: the one rule every writing command checks before any work.

A command writes

- a **folder** (a package, the demo's folder) only where there is none yet, into an empty folder, or over a
  folder that carries our marker (``FolderKind``: a package; a folder the demo wrote), which it replaces
  whole;
- a **file** only where there is none yet, or as one of the files our commands add to a package
  (``model.onnx``, ``graph.svg``, ... in a folder that is a package); an existing file anywhere else is
  overwritten only when the user says so (``force``, the command line's ``--force``).

Anything else is refused with ``InputError`` before any work: a folder of other files, a file that is not
ours, a symbolic link (give the path it points to), and a place that cannot be written (a read-only or
immutable folder, a file where a folder is needed).

>>> import pathlib, tempfile
>>> mine = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
>>> _ = mine.write_text("keep me")
>>> check_file(mine, force=False)
Traceback (most recent call last):
...
hetsurgery.export.errors.InputError: the output ... exists and is not a file of a hetsurgery package; give --force to overwrite it, or another output path
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hetsurgery.export.errors import InputError
from hetsurgery.export.package_files import SAVED_FILES, is_added_file, is_package, not_a_package

WRITE_HINT = "choose an output path in a folder you can write to"


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder hetsurgery writes whole, and why a folder is not one (``None``: it is one of ours)."""

    noun: str
    why_not: Callable[[Path], str | None]


PACKAGE = FolderKind("hetsurgery package", not_a_package)


def check_folder(path: Path, kind: FolderKind | None = None) -> None:
    """``InputError`` unless ``path`` is new, an empty folder, or a folder of ``kind`` that can be replaced."""
    _not_a_link(path, "folder")
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{path} exists and is not a folder; choose a new or empty folder for the "
                             f"{kind.noun if kind else 'output'}")
        reason = _not_replaceable(path, kind)
        if reason is not None:
            noun = kind.noun if kind else "folder hetsurgery wrote"
            raise InputError(f"{path} exists and is not empty, and is not a {noun} ({reason}); only a {noun} is "
                             "replaced and other files are never deleted: choose a new or empty folder")
        stuck = next((p for p in (path, *sorted(path.rglob("*"))) if not _writable(p)), None)
        if stuck is not None:  # the old folder could not be removed after the new one is in place
            what = "it is" if stuck == path else f"{stuck.relative_to(path)} in it is"
            raise InputError(f"cannot replace {path}: {what} read-only or immutable; choose another output folder")
    _writable_home(path)


def check_file(path: Path, *, force: bool) -> None:
    """``InputError`` unless ``path`` is new, a file our commands add to the package it lies in, or ``force``
    is given for an existing plain file; the place must be writable."""
    _not_a_link(path, "file")
    if path.is_dir():
        raise InputError(f"the output {path} is a folder; give a file name")
    home = _writable_home(path)
    if is_package(home):
        if not path.parent.exists():  # a new folder inside the package
            raise InputError(f"the output {path} lies inside the package {home}, which holds only package files; "
                             "choose a path outside the package")
        if path.name in SAVED_FILES:
            raise InputError(f"the output {path} would overwrite the package's own {path.name}; choose a path "
                             "outside the package")
        if not is_added_file(path.name):
            raise InputError(f"the output {path} would put {path.name} into the package {home}, which holds only "
                             "package files (model.onnx, graph.svg, ...); choose a path outside the package")
    elif path.exists() and not force:
        raise InputError(f"the output {path} exists and is not a file of a hetsurgery package; give --force to "
                         "overwrite it, or another output path")
    if path.exists() and not _writable(path):
        raise InputError(f"cannot write {path}: it is read-only or immutable; choose another output path")


def _not_replaceable(folder: Path, kind: FolderKind | None) -> str | None:
    """Why the existing ``folder`` may not be replaced (``None``: it is empty, or of ``kind``)."""
    if not any(folder.iterdir()):
        return None
    return kind.why_not(folder) if kind is not None else "it is not empty"


def _not_a_link(path: Path, what: str) -> None:
    if path.is_symlink():
        raise InputError(f"the output {path} is a symbolic link (to {os.readlink(path)}); give the {what} it points "
                         "to, or a new path")


def _writable_home(path: Path) -> Path:
    """The nearest folder above ``path`` that exists (resolved); ``InputError`` when it cannot take new files."""
    home = next(p for p in path.absolute().parents if p.exists())
    if not home.is_dir():
        raise InputError(f"cannot write {path}: {home} is a file, not a folder; {WRITE_HINT}")
    if not _writable(home):
        raise InputError(f"cannot write {path}: {home} is read-only or immutable; {WRITE_HINT}")
    return home.resolve()


def _writable(path: Path) -> bool:
    """Whether this process may change ``path`` (create, rename and delete in it, for a folder)."""
    mode = os.W_OK | (os.X_OK if path.is_dir() else 0)
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)
