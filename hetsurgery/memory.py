"""Giving freed memory back to the system, for work whose peak resident size matters (``hetsurgery.stream``).

PyTorch frees a CPU tensor to the C allocator. glibc serves blocks below its ``mmap`` threshold (which grows with
the blocks freed, up to 32 MB) from its heap, and freed heap pages stay resident, so work that makes and frees many
such blocks (the pieces of weight matching, a segment's layers) holds hundreds of MB that nothing uses: a streamed
``mal-pad`` merge of two 1.1B Llamas held 865 MB at one of its LAPs, 721 MB after ``malloc_trim``.
``release_free_memory`` hands those pages back; it costs milliseconds, and nothing where glibc is absent.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
