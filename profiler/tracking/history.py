"""What the engine recorded: bounded samples and steps, the events, and the observers fed them.

The hot path keeps samples and step records as plain tuples in their record's field order (the
phase as its plain string), so that the garbage collector untracks them: a long run's records
never make it walk the heap (no full collection caused by the tracker). A record is built only for
observers and when someone reads :meth:`History.sample_records` or :meth:`History.step_records`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from profiler.backends import cuda
from profiler.records import (
    AllocatorReading,
    Event,
    NvmlReading,
    Phase,
    Sample,
    StepRecord,
)
from profiler.run import Observer
from profiler.tracking.guard import Guard, Part
from profiler.tracking.state import EngineState

__all__ = ["MAX_EVENTS", "BoundedLog", "History", "ObserverList"]

#: Events kept in memory (the session stream on disk has them all).
MAX_EVENTS = 10_000
#: NVML is read at most this often (seconds): a query costs tens of microseconds.
_NVML_INTERVAL = 0.5
_PHASES = {str(phase.value): phase for phase in Phase}
#: Distinct per-category splits held for the records (:meth:`History.interned`).
_MAX_SPLITS = 1024


#: A kept sample is one flat tuple of atoms (the garbage collector untracks it at its first
#: collection; a reading object inside would keep it tracked into the oldest generation, as
#: on CUDA, where every sample has one): time, step, phase, module, split, total, then the
#: allocator's seven fields (``allocated`` None: no reading), then NVML's flag and four fields.
_NO_ALLOCATOR: tuple[None, ...] = (None,) * 7
_NO_NVML: tuple[Any, ...] = (False, None, None, None, None)
_NO_READINGS = _NO_ALLOCATOR + _NO_NVML


def _reading_fields(allocator: AllocatorReading | None, nvml: NvmlReading | None) -> tuple:
    """The readings as the flat tail of a kept sample."""
    head = (
        _NO_ALLOCATOR
        if allocator is None
        else (
            allocator.allocated,
            allocator.reserved,
            allocator.active,
            allocator.inactive_split,
            allocator.peak_allocated,
            allocator.num_alloc_retries,
            allocator.num_ooms,
        )
    )
    if nvml is None:
        return head + _NO_NVML
    return head + (True, nvml.process_used, nvml.device_used, nvml.device_total, nvml.device_index)


def sample_record(sample: tuple[Any, ...]) -> Sample:
    """The :class:`~profiler.records.Sample` of a kept sample tuple."""
    allocator = None if sample[6] is None else AllocatorReading(*sample[6:13])
    nvml = NvmlReading(*sample[14:18]) if sample[13] else None
    return Sample(
        sample[0],
        sample[1],
        _PHASES[sample[2]],
        sample[3],
        sample[4],
        sample[5],
        allocator,
        nvml,
    )


class BoundedLog:
    """An append-only list that halves its resolution when full: bounded memory, whole history."""

    __slots__ = ("capacity", "items")

    def __init__(self, capacity: int) -> None:
        self.items: list[Any] = []
        self.capacity = max(16, capacity)

    def append(self, item: Any) -> None:
        items = self.items
        items.append(item)
        if len(items) > self.capacity:
            self.thin()

    def thin(self) -> None:
        """Keep the recent half at full resolution; thin the older half to every other item."""
        items = self.items
        half = len(items) // 2
        self.items = items[:half:2] + items[half:]


class ObserverList(list):  # type: ignore[type-arg]
    """The observers, a list that counts its changes (the fan-out caches bound methods)."""

    __slots__ = ("version",)

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def append(self, item: Any) -> None:
        super().append(item)
        self.version += 1

    def remove(self, item: Any) -> None:
        super().remove(item)
        self.version += 1

    def insert(self, index: Any, item: Any) -> None:
        super().insert(index, item)
        self.version += 1

    def extend(self, items: Any) -> None:
        super().extend(items)
        self.version += 1

    def pop(self, index: Any = -1) -> Any:
        self.version += 1
        return super().pop(index)

    def clear(self) -> None:
        super().clear()
        self.version += 1

    def __setitem__(self, index: Any, item: Any) -> None:
        super().__setitem__(index, item)
        self.version += 1

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self.version += 1

    def __iadd__(self, items: Any) -> ObserverList:  # type: ignore[misc]
        self.extend(items)
        return self


class History:
    """Samples, steps and events of one block, and the observers they are fanned out to."""

    def __init__(self, state: EngineState, guard: Guard, max_samples: int, max_steps: int) -> None:
        self.state = state
        self.guard = guard
        self.samples = BoundedLog(max_samples)
        self.steps = BoundedLog(max_steps)
        self.events: list[Event] = []
        self.observers: ObserverList = ObserverList()
        #: method name -> (observer, bound method) pairs, valid for one observers.version
        self._handlers: dict[str, list[tuple[Any, Callable[..., Any]]]] = {}
        self._handlers_version = -1
        #: The active strategy's split of the bytes now, per category (set by the engine).
        self.split_now: Callable[[], list[int]] = lambda: state.ledger.current[:]
        #: What observers are handed as the run (the facade, a :class:`~profiler.run.TrackedRun`).
        self.run: Any = None
        self._splits: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.last_nvml: NvmlReading | None = None
        self._last_nvml_time = 0.0

    # ------------------------------------------------------------------ samples and steps

    def sample(self, phase: Phase | None = None, *, readings: bool = True) -> tuple[Any, ...]:
        """Take a sample (labelled ``phase``, by default the phase in flight); its tuple.

        ``readings=False`` skips the allocator and NVML (inside the allocator's OOM callback).
        """
        state = self.state
        split = self.split_now()
        if state.on_cuda and readings:
            allocator, nvml = self.allocator_reading(), self.nvml_reading()
            tail = _reading_fields(allocator, nvml)
        else:
            allocator = nvml = None
            tail = _NO_READINGS
        stack = state.module_stack
        module = stack[-1] if stack else state.ledger.module  # (state.innermost_module())
        split_tuple = tuple(split)
        held = self._splits.get(split_tuple)
        if held is None:
            held = self.interned(split_tuple)
        phase = phase or state.phase
        now = time.time()
        total = sum(split)
        # the plain string (``.value`` is a property)
        sample = (now, state.step, phase._value_, module, held, total, *tail)
        log = self.samples
        items = log.items
        items.append(sample)
        if len(items) > log.capacity:
            log.thin()
        if self.observers:
            # the fan-out inlined (the hot path: four samples a step)
            handlers = self._handlers.get("on_sample")
            if handlers is None or self._handlers_version != self.observers.version:
                handlers = self.handlers("on_sample")
            if handlers:
                record = Sample(now, sample[1], phase, module, held, total, allocator, nvml)
                for observer, function in handlers:
                    try:
                        function(record)
                    except Exception as error:
                        self._drop(observer, "on_sample", error)
        return sample

    def record_step(self, phase: Phase | None, now: float) -> StepRecord:
        """Close the step in flight: a sample, the window's peak, a record and an event."""
        state = self.state
        sample = self.sample(phase)
        step_peak, peak_bytes = state.ledger.reset_window()
        peak_held = self._splits.get(peak_bytes)
        if peak_held is None:
            peak_held = self.interned(peak_bytes)
        step, duration = state.step, now - state.step_start
        # the record's fields in order
        row = (step, sample[0], duration, sample[4], sample[5], step_peak, peak_held)
        # No event per step: observers get the record itself (``on_step``); an event a step
        # would be one more long-lived object for the garbage collector to walk.
        log = self.steps
        items = log.items
        items.append(row)
        if len(items) > log.capacity:
            log.thin()
        return StepRecord(step, sample[0], duration, sample[4], sample[5], step_peak, peak_held)

    def interned(self, split: tuple[int, ...]) -> tuple[int, ...]:
        """One tuple per distinct split, held here (a long-lived object).

        The garbage collector untracks a tuple of atoms when it examines it, and a record tuple
        only if the split inside was untracked first. A split referenced only by its record is
        examined after it (the collector moves it behind its referrer), so a quarter of the
        records stayed tracked; held here, the split is examined first, and a steady run
        repeats a few splits.
        """
        cache = self._splits
        found = cache.get(split)
        if found is None:
            if len(cache) >= _MAX_SPLITS:
                cache.clear()
            found = cache[split] = split
        return found

    def sample_records(self) -> list[Sample]:
        """The samples kept, as records."""
        return [sample_record(sample) for sample in self.samples.items]

    def step_records(self) -> list[StepRecord]:
        """The step records kept."""
        return [StepRecord(*step) for step in self.steps.items]

    def last_total(self) -> int:
        """The total of the latest sample (0 before the first)."""
        items = self.samples.items
        return items[-1][5] if items else 0

    def last_bytes(self) -> tuple[int, ...] | None:
        """The per-category bytes of the latest sample (``None`` before the first)."""
        items = self.samples.items
        return tuple(items[-1][4]) if items else None

    # ------------------------------------------------------------------ device readings

    def allocator_reading(self) -> AllocatorReading | None:
        """The caching allocator's figures for the tracked CUDA device (``None`` elsewhere)."""
        state = self.state
        if not state.on_cuda or Part.ALLOCATOR in self.guard.disabled:
            return None
        try:
            return cuda.allocator_reading(state.device.index)
        except Exception as error:
            self.guard.fail(Part.ALLOCATOR, error)
            return None

    def nvml_reading(self) -> NvmlReading | None:
        """NVML's view of this process and device, at most every half second (cached between)."""
        state = self.state
        if not state.on_cuda or Part.NVML in self.guard.disabled:
            return None
        now = time.monotonic()
        if now - self._last_nvml_time < _NVML_INTERVAL:
            return self.last_nvml
        self._last_nvml_time = now
        try:
            from profiler.backends import nvml  # deferred: loads the NVML bindings

            self.last_nvml = nvml.process_reading(state.device.index)
        except Exception as error:
            self.last_nvml = None
            self.guard.off(Part.NVML, f"NVML readings are off ({type(error).__name__}: {error})")
        return self.last_nvml

    # ------------------------------------------------------------------ events and observers

    def emit(self, event: Event) -> None:
        """Record ``event`` (the newest :data:`MAX_EVENTS` are kept) and pass it on."""
        events = self.events
        events.append(event)
        if len(events) > MAX_EVENTS + MAX_EVENTS // 4:
            del events[: len(events) - MAX_EVENTS]  # in batches: amortised O(1) per event
        self.notify("on_event", event)

    def add_observer(self, observer: Any, *, started: bool) -> None:
        """Feed ``observer`` from now on (``on_start`` at once when the block already started)."""
        self.observers.append(observer)
        if started:
            self.call(observer, "on_start", self.run)

    def handlers(self, method: str) -> list[tuple[Any, Callable[..., Any]]]:
        """The observers that have ``method``, with it bound (cached until the list changes).

        :class:`~profiler.run.Observer`'s own empty methods are left out: a run whose observers
        take no samples builds no sample records.
        """
        if self._handlers_version != self.observers.version:
            self._handlers = {}
            self._handlers_version = self.observers.version
        found = self._handlers.get(method)
        if found is None:
            noop = getattr(Observer, method, None)
            found = self._handlers[method] = [
                (observer, function)
                for observer in self.observers
                if (function := getattr(observer, method, None)) is not None
                and (noop is None or getattr(type(observer), method, None) is not noop)
            ]
        return found

    def notify(self, method: str, *args: Any) -> None:
        """Call ``method`` on every observer that has it."""
        handlers = self._handlers.get(method)
        if handlers is None or self._handlers_version != self.observers.version:
            handlers = self.handlers(method)
        for observer, function in handlers:
            try:
                function(*args)
            except Exception as error:
                self._drop(observer, method, error)

    def call(self, observer: Any, method: str, *args: Any) -> None:
        """Call one observer; one that raises is dropped with one warning."""
        function = getattr(observer, method, None)
        if function is None:
            return
        try:
            function(*args)
        except Exception as error:
            self._drop(observer, method, error)

    def _drop(self, observer: Any, method: str, error: Exception) -> None:
        if observer in self.observers:
            self.observers.remove(observer)
        self.guard.warn_once(
            f"observer-{id(observer)}",
            f"{type(observer).__name__}.{method} failed and was switched off "
            f"({type(error).__name__}: {error})",
        )
