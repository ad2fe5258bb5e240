"""The one read interface analysers get (:class:`RunView`), the little they may ask of a run
(:class:`RunControl`), and the :class:`Observer` base the engine fans records out to.

The engine (``profiler.tracking``) measures; analysers (leaks, the OOM report, advice, the
session writer, the views) read what it measured through :class:`RunView` only. A test fake or an
offline reader implements the same protocol, and mypy checks that it does. Nothing here imports
torch, pandas or the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from profiler.records import (
    Category,
    Event,
    Failure,
    LiveStorage,
    ModuleActivity,
    Peaks,
    Sample,
    SessionInfo,
    StepRecord,
)

__all__ = ["Observer", "RunControl", "RunView", "TrackedRun"]


class RunView(Protocol):
    """What a tracked run measured and knows, read-only, during the run and after it.

    Every member is cheap unless it says otherwise; records are immutable snapshots.
    """

    @property
    def info(self) -> SessionInfo:
        """The run's facts (name, mode, device, model, optimizer, batch...) as seen so far."""
        ...

    @property
    def samples(self) -> Sequence[Sample]:
        """The samples kept (bounded: older ones thinned on long runs), oldest first."""
        ...

    @property
    def steps(self) -> Sequence[StepRecord]:
        """One record per finished step (bounded like :attr:`samples`)."""
        ...

    @property
    def peaks(self) -> Peaks:
        """The highest total, its split, each category's own highest, and the bytes now."""
        ...

    @property
    def failure(self) -> Failure | None:
        """The out-of-memory failure, if the run had one."""
        ...

    @property
    def predicted(self) -> Mapping[Category, int | None]:
        """The bytes predicted per category (``None``: no prediction for it)."""
        ...

    @property
    def device_total(self) -> int | None:
        """The device's memory: a simulated capacity, else NVML's total, else ``None``."""
        ...

    @property
    def model(self) -> Any:
        """The tracked model while it is alive (held weakly), else ``None``."""
        ...

    def module_activity(self) -> list[ModuleActivity]:
        """One record per module seen, in the order first seen."""
        ...

    def live_storages(self) -> list[LiveStorage]:
        """Every storage the ledger holds now, largest first (costs one pass over them)."""
        ...

    def kv_caches(self) -> list[Any]:
        """The live KV-cache objects the run knows."""
        ...


class RunControl(Protocol):
    """What an analyser may ask of a running tracker: a leak hunt, and publishing an event."""

    def hunt(self, steps: int) -> None:
        """Record creation sites (exact ledger on, in fast mode) for ``steps`` steps."""
        ...

    def emit(self, event: Event) -> None:
        """Record ``event`` and pass it to every observer."""
        ...


class TrackedRun(RunView, RunControl, Protocol):
    """A live run: read it, and ask for a hunt or an event."""


class Observer:
    """Receives a run's records as they are made; override the methods you need.

    A method that raises is switched off for that observer with one warning; the run goes on.
    """

    def on_start(self, run: TrackedRun) -> None:
        """The block was entered (or the observer added to a running tracker)."""

    def on_sample(self, sample: Sample) -> None:
        """A sample was taken (forward start and end, backward end, step end...)."""

    def on_step(self, record: StepRecord) -> None:
        """A step ended."""

    def on_event(self, event: Event) -> None:
        """An event was recorded (step end, leak, hunt, OOM, suggestion, warning...)."""

    def on_close(self, run: TrackedRun, exc: BaseException | None) -> None:
        """The block exited (``exc``: what it raised, if anything)."""
