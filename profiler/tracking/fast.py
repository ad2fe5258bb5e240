"""The fast strategy: no per-op interception; an allocator counter read at boundaries.

The known tensors are charged exactly through the ledger (:mod:`.known`); the counter's growth
since the block began, less the known tensors' growth, is the residual: activations during
forward and backward, temporaries elsewhere. The counter is CUDA's caching allocator on CUDA and
glibc's heap (``mallinfo2``) on CPU. Per-module boundary reads are made only where one read is
cheap (always on CUDA; ``mallinfo2`` walks the heap and can take 30 us in a big process).

Per step on lean steps (no global module hooks): four counter reads (forward start and end,
backward end, step end), one gradient claim (:mod:`~profiler.tracking.gradients`), no tensor hook
(a parameter hooked once marks backward starts), no callback queued on autograd's engine (the
backward's end is taken at the next boundary); nothing that grows with the parameter or module
count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from operator import gt
from threading import get_ident
from typing import Any

import torch

from profiler.backends import cuda
from profiler.backends.host import heap_bytes_reader
from profiler.ledger import ACTIVATIONS, OTHER, TEMPORARIES
from profiler.records import Phase
from profiler.tracking.guard import Guard, Part
from profiler.tracking.phases import PhaseTracker, is_compiling
from profiler.tracking.state import (
    BASE,
    CALLS,
    FWD_PEAK,
    INCL,
    MICROBATCH,
    OWN,
    EngineState,
    Mode,
    enter_microbatch,
    new_module_stats,
)

__all__ = ["CPU_HEAP_COUNTER", "MODULE_READ_BUDGET", "FastStrategy"]

#: Per-module counter reads are made only when one read costs less than this (seconds).
MODULE_READ_BUDGET = 5e-6
#: Off CUDA, fast mode measures in exact mode (with a one-line notice): glibc's heap counter sees
#: the whole process's heap, not tensors, and one read walks the heap (0.3 us to milliseconds).
#: True keeps the heap counter (the tests of the split and the overhead benchmark use it).
CPU_HEAP_COUNTER = False
_GROWING = (Phase.FORWARD, Phase.BACKWARD)

Counter = Callable[[], tuple[int, int | None]]


class FastStrategy:
    """Splits allocator counter readings into categories: known tensors exactly, the rest by
    phase."""

    kind = Mode.FAST

    def __init__(self, state: EngineState, guard: Guard, phases: PhaseTracker) -> None:
        self.state = state
        self.guard = guard
        self.phases = phases
        self.read_counter: Counter = lambda: (0, None)
        self.read_current: Callable[[], int] = lambda: 0
        self.counter_base = 0
        self.known_base = 0
        self.other_base = 0
        self.offset = 0
        self.peak_base = 0
        self._total = 0
        self._no_peak = False

    # ------------------------------------------------------------------ setup

    def start(self) -> None:
        """Choose the counter and take the baselines (the known tensors are charged already)."""
        state = self.state
        self.known_base = sum(state.ledger.current)
        self.read_counter = self._make_counter()
        counter = self.read_counter
        only = getattr(counter, "current_only", None)
        self._no_peak = only is not None  # a counter without a peak: read its current alone
        self.read_current = only or (lambda: counter()[0])
        self.counter_base, peak = counter()
        self.peak_base = peak or 0
        state.module_frames = state.on_cuda or self._counter_cost() < MODULE_READ_BUDGET
        self.other_base = max(self.counter_base - self.known_base, 0)
        self.offset = self.known_base + self.other_base - self.counter_base

    def stop(self) -> None:
        """Nothing to undo: the counter is only read."""

    def _counter_cost(self) -> float:
        """Seconds one counter read takes here (glibc's walks every arena: slow on big heaps)."""
        counter = self.read_counter
        start = time.perf_counter()
        for _ in range(8):
            counter()
        return (time.perf_counter() - start) / 8

    def _make_counter(self) -> Counter:
        """The allocator counter read at boundaries: (current, peak or None)."""
        state = self.state
        if state.device.type == "cuda":
            index = state.device.index

            def cuda_counter() -> tuple[int, int | None]:
                reading = cuda.allocator_reading(index)
                if reading is None:
                    return 0, None
                return reading.allocated, reading.peak_allocated

            return cuda_counter
        reader = heap_bytes_reader()
        if reader is None:
            self.guard.warn_once(
                "no-counter",
                "fast mode has no allocator counter on this platform (no glibc mallinfo2): "
                "only parameters, gradients, optimizer state and KV cache are measured",
            )
            return lambda: (sum(state.ledger.current), None)

        def heap_counter() -> tuple[int, int | None]:
            return reader(), None

        heap_counter.current_only = reader  # type: ignore[attr-defined]
        return heap_counter

    # ------------------------------------------------------------------ the split

    def split_of(self, current: int) -> list[int]:
        """Split a counter reading: the known tensors exactly, the residual by phase."""
        state = self.state
        split = state.ledger.current[:]
        residual = current - self.counter_base - (sum(split) - self.known_base)
        split[OTHER] += self.other_base
        if residual > 0:
            split[ACTIVATIONS if state.phase in _GROWING else TEMPORARIES] += residual
        return split

    def read(self) -> int:
        """Read the counter, keep the peaks and frames up to date; the total now."""
        self.split()
        return self._total

    def split(self) -> list[int]:
        """Read the counter: the bytes per category now, with the peaks and frames kept.

        One counter read and one split per call (the hot path of every fast-mode sample).
        """
        if self._no_peak:
            current, peak = self.read_current(), None
        else:
            current, peak = self.read_counter()
        state = self.state
        ledger = state.ledger
        split = ledger.current[:]
        residual = current - self.counter_base - (sum(split) - self.known_base)
        split[OTHER] += self.other_base
        growing = state.phase in _GROWING
        if residual > 0:
            split[ACTIVATIONS if growing else TEMPORARIES] += residual
        offset = self.offset
        total = self._total = current + offset
        if total > ledger.window_peak:
            ledger.observe_total(total, split)  # (each category's peak too)
        else:
            frames = ledger.frames
            if frames and total > frames[-1]:
                frames[-1] = total
            category_peak = ledger.category_peak
            if any(map(gt, split, category_peak)):  # (one pass in C; none rises in a steady run)
                for i, value in enumerate(split):
                    if value > category_peak[i]:
                        category_peak[i] = value
                        ledger.category_peak_seq[i] = ledger.seq
        if peak is not None and peak > self.peak_base:
            # The allocator saw a peak between two boundaries: attribute its excess over the
            # current split to the phase in flight.
            self.peak_base = peak
            peak_total = peak + offset
            if peak_total > ledger.window_peak:
                at_peak = split[:]
                at_peak[ACTIVATIONS if growing else TEMPORARIES] += max(peak - current, 0)
                ledger.observe_total(peak_total, at_peak)
        return split

    # ------------------------------------------------------------------ module hooks

    def module_pre(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        """Global forward pre-hook, the lean path: one counter read, no per-op work."""
        if is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        state = self.state
        if state.thread != get_ident() or Part.MODULE_HOOKS in self.guard.disabled:
            return None
        try:
            stack = state.module_stack
            if not stack:
                self.phases.forward_starts()
            name = state.names.get(id(module)) or type(module).__name__
            stack.append(name)
            stats = state.module_stats.get(name)
            if stats is None:
                stats = state.module_stats[name] = new_module_stats()
            stats[CALLS] += 1
            if stats[MICROBATCH] != state.microbatch:
                enter_microbatch(stats, state.microbatch)
            if state.module_frames:
                current = self.read_current()
                total = current + self.offset
                ledger = state.ledger
                if total > ledger.window_peak:
                    ledger.observe_total(total, self.split_of(current))
                ledger.frames.append(total)
                stats[BASE] = total
        except Exception as error:
            self.guard.fail(Part.MODULE_HOOKS, error)
        return None

    def module_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Global forward hook, the lean path."""
        if is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        state = self.state
        stack = state.module_stack
        if not stack or state.thread != get_ident() or Part.MODULE_HOOKS in self.guard.disabled:
            return None
        try:
            name = stack.pop()
            if state.module_frames:
                current = self.read_current()
                total = current + self.offset
                ledger = state.ledger
                if total > ledger.window_peak:
                    ledger.observe_total(total, self.split_of(current))
                frames = ledger.frames
                peak = max(frames.pop(), total) if frames else total
                if frames and peak > frames[-1]:
                    frames[-1] = peak
                stats = state.module_stats[name]
                base = stats[BASE]
                if peak - base > stats[FWD_PEAK]:
                    stats[FWD_PEAK] = peak - base
                if total > base:
                    # what the forward left behind is what it saved (children included)
                    stats[OWN] += total - base
                    stats[INCL] += total - base
            if not stack:
                self.phases.forward_ends()
        except Exception as error:
            self.guard.fail(Part.MODULE_HOOKS, error)
        return None
