"""Shared test set-up: fast mode keeps glibc's heap counter on CPU in the tests.

Off CUDA, ``mode="fast"`` measures in exact mode by default (the heap counter sees the whole
process, not tensors); the tests of fast mode's own logic run it on this CPU machine with the heap
counter (or a scripted one) instead. ``test_fast_mode_off_cuda_is_exact_with_a_notice`` turns
this off to check the default.
"""

from __future__ import annotations

import pytest

from profiler.tracking import fast as fast_module


@pytest.fixture(autouse=True)
def _fast_mode_keeps_the_heap_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_module, "CPU_HEAP_COUNTER", True)
