"""A folder of several outputs (the demo's packages and pictures), marked as ours by a manifest.

The manifest, ``hetsurgery-outputs.json``, names the command that wrote the folder and lists every file it
wrote: ``{"format": "hetsurgery-outputs/1", "command": "demo", "files": ["interpolation.png", ...]}``. A
folder is one of that command's folders when its manifest says so and every file in it is listed, or lies
in a package the manifest lists (``export`` and ``render`` may add files to a package later). Only such a
folder is replaced by the command; a file someone put there makes it theirs.

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "plot.png").write_bytes(b"")
>>> write_manifest(folder, "demo")
>>> not_written_by(folder, "demo") is None
True
>>> _ = (folder / "notes.txt").write_text("mine")
>>> not_written_by(folder, "demo")
'it holds files that the demo did not write: notes.txt'
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from hetsurgery.export.outputs import FolderKind
from hetsurgery.export.package_files import is_package

MANIFEST = "hetsurgery-outputs.json"
FORMAT = "hetsurgery-outputs/1"


def write_manifest(folder: Path, command: str) -> None:
    """Write ``folder``'s manifest, listing every file under it (call it last)."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    doc = {"format": FORMAT, "command": command, "files": files}
    (folder / MANIFEST).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def not_written_by(folder: Path, command: str) -> str | None:
    """Why ``folder`` is not a folder ``command`` wrote (``None`` when it is one)."""
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"it has no readable {MANIFEST}"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("command") != command:
        return f"its {MANIFEST} is not the {command}'s"
    listed = {*doc.get("files", ()), MANIFEST}
    packages = {Path(name).parts[0] for name in listed if len(Path(name).parts) > 1}
    foreign = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*"))
               if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() not in listed
               and not _in_package(folder, p, packages)]
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        return f"it holds files that the {command} did not write: {shown}"
    return None


def written_by(command: str) -> FolderKind:
    """The kind of folder ``command`` writes whole (``atomic_folder``, ``check_folder``)."""
    return FolderKind(f"folder written by hetsurgery {command}", partial(not_written_by, command=command))


def _in_package(folder: Path, path: Path, packages: set[str]) -> bool:
    top = path.relative_to(folder).parts[0]
    return top in packages and top != path.name and is_package(folder / top)
