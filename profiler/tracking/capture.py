"""The out-of-memory failure: built once, where it is first seen, holding the sample taken at it.

Three places see a failure first: the ledger, when a simulated capacity would be exceeded (before
the allocation is charged); the CUDA caching allocator's OOM observer (inside the allocator,
before torch raises); and, failing both, the ``torch.OutOfMemoryError`` reaching the block's end,
whose message is parsed. Each calls :meth:`FailureCapture.capture`, which takes the sample first
and builds the frozen :class:`~profiler.records.Failure` around it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from profiler.backends import cuda
from profiler.errors import BackendUnavailable
from profiler.records import Failure, FailureSource
from profiler.tracking.guard import Guard, Part
from profiler.tracking.history import History, sample_record
from profiler.tracking.state import EngineState

__all__ = ["MAX_LIVE", "FailureCapture", "parse_cuda_oom"]

#: The largest live storages kept in a failure.
MAX_LIVE = 50
#: torch's ``format_size``: "512 bytes" up to 1 KiB, then KiB, MiB and GiB with two decimals.
_UNITS = {"bytes": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_SIZE = r"(?<![0-9.\-])([0-9]+(?:\.[0-9]+)?) (bytes|B|KiB|MiB|GiB|TiB)\b"


class FailureCapture:
    """Builds the run's :class:`Failure`, and listens to the CUDA allocator for one."""

    def __init__(self, state: EngineState, history: History, guard: Guard) -> None:
        self.state = state
        self.history = history
        self.guard = guard
        self.observer: cuda.OomObserver | None = None
        self.recorder: cuda.MemoryHistory | None = None
        self.history_entries = 0
        self.history_snapshot: Any = None

    def capture(
        self,
        source: FailureSource,
        *,
        requested: int | None,
        capacity: int | None,
        free: int | None,
        readings: bool = True,
        snapshot: Any = None,
    ) -> Failure:
        """Take the sample at the failure, then build and keep the failure around it."""
        sample = sample_record(self.history.sample(readings=readings))
        failure = Failure(
            source=source,
            sample=sample,
            requested=requested,
            capacity=capacity,
            free=free,
            live=tuple(self.state.ledger.live_storages()[:MAX_LIVE]),
            snapshot=snapshot,
        )
        self.state.failure = failure
        return failure

    def on_overflow(self, requested: int, total: int) -> None:
        """The ledger's callback: a simulated capacity would be exceeded by ``requested``."""
        capacity = self.state.capacity or 0
        self.capture(
            FailureSource.SIMULATED,
            requested=requested,
            capacity=capacity,
            free=max(capacity - total, 0),
        )

    def at_exit(self, exc: BaseException) -> Failure:
        """The block raised an out-of-memory error: the failure (from its message if unseen)."""
        failure = self.state.failure
        if failure is None:
            requested, capacity, free = parse_cuda_oom(str(exc))
            failure = self.capture(
                FailureSource.EXCEPTION, requested=requested, capacity=capacity, free=free
            )
        snapshot = self._last_snapshot()
        if failure.snapshot is None and snapshot is not None:
            failure = self.state.failure = dataclasses.replace(failure, snapshot=snapshot)
        return failure

    # ------------------------------------------------------------------ the CUDA allocator

    def attach(self) -> None:
        """Listen to the CUDA allocator's OOM observer (tried again each step until CUDA is up)."""
        if not self.state.on_cuda or Part.OOM_OBSERVER in self.guard.disabled:
            return
        try:
            if self.observer is None:
                self.observer = cuda.OomObserver(self._on_cuda_oom, snapshot=True)
            self.observer.attach()  # False until CUDA is initialised
        except BackendUnavailable:
            self.guard.disabled.add(Part.OOM_OBSERVER)
            self.observer = None
        except Exception as error:
            self.guard.fail(Part.OOM_OBSERVER, error)
            self.observer = None

    def reattach(self) -> None:
        """At a step end: attach (and start the history) if CUDA came up since."""
        if self.observer is not None and not self.observer.attached:
            self.attach()
        if self.history_entries and self.recorder is None:
            self.start_history(self.history_entries)

    def start_history(self, entries: int) -> None:
        """Record the CUDA allocator's history (every alloc and free, with stacks), bounded to
        ``entries`` events, once CUDA is initialised (tried again each step until then)."""
        self.history_entries = entries
        if self.recorder is not None or not cuda.is_initialized():
            return
        try:
            recorder = cuda.MemoryHistory(entries)
            recorder.__enter__()
            self.recorder = recorder
        except BackendUnavailable as error:
            self.history_entries = 0
            self.guard.warn_once("history", f"no allocator history: {error.message}")

    def stop_history(self) -> None:
        """Keep the snapshot with the recorded history, and stop recording."""
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        try:
            self.history_snapshot = recorder.snapshot()
        finally:
            recorder.__exit__(None, None, None)

    def memory_viz_snapshot(self) -> Any:
        """The allocator snapshot with its history: now while recording, else the last one."""
        if self.recorder is not None:
            return self.recorder.snapshot()
        return self.history_snapshot

    def detach(self) -> None:
        """Stop listening."""
        if self.observer is not None:
            try:
                self.observer.detach()
            except Exception as error:
                self.guard.fail(Part.OOM_OBSERVER, error)

    def reset(self) -> None:
        """Forget the observer and the history of a previous block."""
        self.observer = None
        self.history_entries = 0
        self.history_snapshot = None

    def _on_cuda_oom(self, notice: cuda.OomNotice) -> None:
        """Allocator callback at a real CUDA OOM (runs inside the allocator: never raises)."""
        try:
            self.capture(
                FailureSource.ALLOCATOR,
                requested=notice.requested,
                capacity=notice.device_total,
                free=notice.device_free,
                readings=False,
                snapshot=self._last_snapshot(),
            )
        except Exception as error:
            self.guard.fail(Part.OOM_OBSERVER, error)

    def _last_snapshot(self) -> Any:
        observer = self.observer
        if observer is not None and observer.snapshots:
            return observer.snapshots[-1]
        return None


def parse_cuda_oom(message: str) -> tuple[int | None, int | None, int | None]:
    """What a CUDA OOM message says: (requested, capacity, free) bytes, ``None`` where absent.

    Reads torch's wording, e.g. "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a
    total capacity of 79.10 GiB of which 1.50 GiB is free."
    """

    def grab(pattern: str) -> int | None:
        match = re.search(pattern, message)
        if match is None:
            return None
        value = float(match.group(1)) * _UNITS[match.group(2)]
        return int(value) if math.isfinite(value) else None

    return (
        grab(r"Tried to allocate " + _SIZE),
        grab(r"total capacity of " + _SIZE),
        grab(_SIZE + r" is free"),
    )
