"""Write files and folders so that a failure leaves nothing half written.

A file is written under a temporary name in its own folder and renamed with ``os.replace``; a folder is
built as a hidden sibling and exchanged with the old one at the end (``commit``: Ctrl-C cannot split the
exchange nor the removal of the old folder). Missing parent folders are created, and removed again when
the write fails.

>>> import pathlib, tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_file(root / "a.txt") as tmp:
...     _ = tmp.write_text("done")
>>> sorted(p.name for p in root.iterdir())
['a.txt']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from hetsurgery.export.commit import exchange, replace_files, uninterrupted
from hetsurgery.export.errors import InputError
from hetsurgery.export.outputs import FolderKind, check_folder


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with parent_folders(path):
        try:
            yield tmp
            replace_files([(tmp, path)])
        except OSError as exc:
            if exc.filename in (str(tmp), tmp):  # the folder refuses new files: a bad choice of output path
                raise InputError(f"cannot write {path}: {exc.strerror or exc} in {path.parent}; choose an output "
                                 "path in a folder you can write to") from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], kind: FolderKind | None = None) -> Iterator[Path]:
    """Yield an empty hidden sibling folder; on success it becomes ``path``, on failure it is deleted.

    An existing ``path`` is replaced only when it is empty or a folder of ``kind`` (a package, say): a folder
    of other files is never deleted. ``hetsurgery.export.outputs.check_folder`` refuses anything else with
    ``InputError`` before anything is written. The old folder and the new one are exchanged in one step,
    Ctrl-C held (``commit``).
    """
    path = Path(path)
    check_folder(path, kind)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with parent_folders(path):
        make_folder(tmp, path)
        try:
            yield tmp
            _swap_in(tmp, path, kind)
        finally:
            with uninterrupted():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def parent_folders(path: Path) -> Iterator[None]:
    """Create the missing folders above ``path``; remove the ones created here if the body fails.

    A folder that cannot be created (a read-only or missing mount, a file in the way) is the user's choice
    of output path: ``InputError`` names it.
    """
    created: list[Path] = []
    try:
        for folder in reversed([p for p in path.parents if not p.is_dir()]):  # top-down
            make_folder(folder, path)
            created.append(folder)
        yield
    except BaseException:
        with uninterrupted():
            for folder in reversed(created):  # deepest first; a folder someone filled meanwhile stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def make_folder(folder: Path, target: Path) -> None:
    """``folder.mkdir()``; ``InputError`` naming ``target`` (the output it is for) when that fails."""
    try:
        folder.mkdir()
    except OSError as exc:
        raise InputError(f"cannot write {target}: creating {folder} failed ({exc.strerror or exc}); "
                         "choose an output path in a folder you can write to") from exc


def _swap_in(tmp: Path, path: Path, kind: FolderKind | None) -> None:
    """``tmp`` becomes ``path``; an old folder at ``path`` is exchanged with it in one step, then deleted."""
    with uninterrupted():
        if not path.exists():
            os.rename(tmp, path)
            return
        try:
            check_folder(path, kind)
        except InputError as exc:  # it changed while we were writing
            raise InputError(f"{path} changed while writing and is no longer replaceable; nothing was replaced "
                             f"({exc})") from exc
        exchange(tmp, path)
        shutil.rmtree(tmp)  # the old folder, now at the temporary name
