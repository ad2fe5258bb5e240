"""Host memory: glibc's heap counter (``mallinfo2``) and psutil's view of processes and RAM.

For CPU runs (where there is no allocator counter) and for CPU offload (optimizer state or
weights parked in host memory). psutil is imported lazily; where it is missing the readers return
``None`` and warn once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["HostMemory", "ProcessDetails", "describe_process", "heap_bytes_reader", "host_memory"]


@dataclass(frozen=True, slots=True)
class HostMemory:
    """Host memory of one process and of the machine (bytes); ``None`` where unavailable.

    ``rss`` is resident memory (pages touched; a fresh ``torch.empty`` adds none until written),
    ``uss`` the memory unique to the process (slower to read; only with ``detailed=True``).
    """

    pid: int
    rss: int
    vms: int
    uss: int | None
    system_total: int
    system_available: int
    system_used: int
    swap_used: int | None


@dataclass(frozen=True, slots=True)
class ProcessDetails:
    """Who a process is: name, user and command line (``None`` where psutil may not look)."""

    name: str | None
    user: str | None
    command: str | None


_warned: set[str] = set()


def _psutil() -> Any | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        if "psutil" not in _warned:
            _warned.add("psutil")
            warnings.warn(
                "psutil is not installed: host memory and process names are unavailable",
                stacklevel=3,
            )
        return None
    return psutil


def host_memory(pid: int | None = None, *, detailed: bool = False) -> HostMemory | None:
    """psutil's view of process ``pid`` (default: this one) and of the machine's RAM.

    Returns ``None`` where the process is gone, not visible, or psutil is missing.
    ``detailed=True`` adds USS, which walks the process's memory maps (milliseconds).
    """
    psutil = _psutil()
    if psutil is None:
        return None
    pid = os.getpid() if pid is None else pid
    try:
        proc = psutil.Process(pid)
        info = proc.memory_full_info() if detailed else proc.memory_info()
        system = psutil.virtual_memory()
    except (psutil.Error, OSError):
        return None
    try:
        swap_used: int | None = int(psutil.swap_memory().used)
    except (psutil.Error, OSError, RuntimeError):
        swap_used = None
    uss = getattr(info, "uss", None)
    return HostMemory(
        pid=pid,
        rss=int(info.rss),
        vms=int(info.vms),
        uss=None if uss is None else int(uss),
        system_total=int(system.total),
        system_available=int(system.available),
        system_used=int(system.total - system.available),
        swap_used=swap_used,
    )


def describe_process(pid: int) -> ProcessDetails:
    """Name, user and command line of ``pid``; each ``None`` where it cannot be read.

    A pid that is not visible (another user's process without permission, or a host pid seen
    from inside a container's pid namespace) gives all three ``None``.
    """
    psutil = _psutil()
    if psutil is None:
        return ProcessDetails(None, None, None)
    try:
        proc = psutil.Process(pid)
    except (psutil.Error, OSError):
        return ProcessDetails(None, None, None)
    values: list[str | None] = []
    for read in (proc.name, proc.username, proc.cmdline):
        try:
            value = read()
        except (psutil.Error, OSError):
            value = None
        if isinstance(value, list):
            value = " ".join(value) or None
        values.append(value)
    return ProcessDetails(*values)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )  # fmt: skip
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
