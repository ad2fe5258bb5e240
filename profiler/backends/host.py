"""Host memory: glibc's heap counter (``mallinfo2``) and psutil's view of this process."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["heap_bytes_reader"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        )
    ]


def heap_bytes_reader() -> Callable[[], int] | None:
    """A function returning the bytes glibc's malloc has handed out (``uordblks + hblkhd``).

    About 1 µs a call. ``None`` where there is no glibc ``mallinfo2`` (musl, macOS, old glibc).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    mallinfo2.argtypes = []

    def heap_bytes() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return heap_bytes
