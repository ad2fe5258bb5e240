"""Host memory through psutil and glibc."""

from __future__ import annotations

import os

import psutil
import pytest
import torch

from profiler.backends.host import (
    HostMemory,
    ProcessDetails,
    describe_process,
    heap_bytes_reader,
    host_memory,
)


def test_host_memory_of_this_process() -> None:
    reading = host_memory()
    assert isinstance(reading, HostMemory)
    assert reading.pid == os.getpid()
    system = psutil.virtual_memory()
    assert reading.system_total == system.total
    assert reading.system_used == reading.system_total - reading.system_available
    assert reading.uss is None
    assert 0 < reading.rss <= reading.vms


def test_rss_follows_written_memory() -> None:
    before = host_memory()
    block = torch.ones(64 * 1024**2, dtype=torch.uint8)  # 64 MiB, written
    after = host_memory()
    assert before is not None and after is not None
    # touched pages are resident: at least 60 MiB more (the allocator may reuse a few pages)
    assert after.rss - before.rss >= 60 * 1024**2
    del block


def test_detailed_adds_uss() -> None:
    reading = host_memory(detailed=True)
    assert reading is not None and reading.uss is not None
    assert reading.uss <= reading.rss


def test_gone_process_gives_none() -> None:
    assert host_memory(pid=2**22 + 12345) is None
    assert describe_process(2**22 + 12345) == ProcessDetails(None, None, None)


def test_describe_this_process() -> None:
    details = describe_process(os.getpid())
    me = psutil.Process()
    assert details == ProcessDetails(me.name(), me.username(), " ".join(me.cmdline()))


def test_heap_reader_follows_allocations() -> None:
    reader = heap_bytes_reader()
    if reader is None:
        pytest.skip("no glibc mallinfo2 here")
    before = reader()
    block = torch.empty(8 * 1024**2, dtype=torch.uint8)
    grown = reader() - before
    del block
    assert 8 * 1024**2 <= grown < 8 * 1024**2 + 64 * 1024
    assert reader() - before < 64 * 1024
