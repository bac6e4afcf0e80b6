"""The moment an output changes: renames that Ctrl-C cannot split.

Every writer builds its output under a hidden temporary name and then *commits* it: one rename for a file,
an exchange of two folders for a package, a few renames for an ONNX model and its external data. A Ctrl-C
(SIGINT) that arrives during a commit is held until the commit is complete and then takes effect, so an
interrupted command leaves either the old output untouched or the new one whole, never a mix of both.

``exchange`` swaps two paths in one system call (Linux ``renameat2(RENAME_EXCHANGE)``): at every instant
the output path holds either the old folder or the new one. Where the system cannot exchange, it falls
back to two renames, put back if the second fails.

>>> import pathlib, tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for name in ("old", "new"):
...     (root / name).mkdir(); _ = (root / name / f"{name}.txt").write_text(name)
>>> exchange(root / "new", root / "old")
>>> sorted(p.name for p in (root / "old").iterdir())
['new.txt']
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_CANNOT_EXCHANGE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV})


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) while the body runs; one that came meanwhile is raised again when it ends.

    Only the main thread receives Python's signals, so elsewhere the body simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if held:
        signal.raise_signal(signal.SIGINT)  # the handler that was there decides: KeyboardInterrupt by default


def exchange(new: Path, old: Path) -> None:
    """Swap the folders ``new`` and ``old``: ``old``'s path then holds what was at ``new``, and vice versa."""
    if _renameat2_exchange(new, old):
        return
    aside = old.with_name(f".{old.name}.{uuid.uuid4().hex[:8]}.swap")
    os.rename(old, aside)
    try:
        os.rename(new, old)
    except BaseException:
        os.rename(aside, old)
        raise
    os.rename(aside, new)


def replace_files(moves: Sequence[tuple[Path, Path]]) -> None:
    """``os.replace(src, dst)`` for every pair, Ctrl-C held until all are done."""
    with uninterrupted():
        for src, dst in moves:
            os.replace(src, dst)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one system call; ``False`` where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):  # not Linux, or a C library older than glibc 2.28
        return False
    call.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _CANNOT_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
