"""A scripted run for the leak detector's tests: a :class:`~profiler.run.TrackedRun` by hand.

mypy checks this module (``[tool.mypy] files``), and the assignment at the bottom makes it check
that :class:`FakeTracker` has every member of the protocol with the right types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from profiler.records import (
    CATEGORIES,
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
from profiler.run import TrackedRun

__all__ = ["FakeTracker"]


class FakeTracker:
    """A run whose live storages, facts and capacity a test sets; it records hunts and events.

    Args:
        mode: the run's mode (``"fast"`` or ``"exact"``): a hunt in fast mode says so.
        capacity: a simulated device capacity (also :attr:`device_total`).
        kv_cache_reused: whether a prompt was fed to a cache that already held positions
            (``False``: KV-cache growth is left out of the growth test).
    """

    def __init__(
        self, mode: str = "fast", capacity: int | None = None, *, kv_cache_reused: bool = True
    ) -> None:
        self.mode = mode
        self.capacity = capacity
        self.kv_cache_reused = kv_cache_reused
        #: what :meth:`live_storages` returns (a test appends to it)
        self.storages: list[LiveStorage] = []
        #: what :meth:`kv_caches` returns
        self.caches: list[Any] = []
        self.events: list[Event] = []
        self.hunt_calls: list[int] = []

    # ------------------------------------------------------------------ RunView

    @property
    def info(self) -> SessionInfo:
        return SessionInfo(
            name="fake",
            mode=self.mode,
            device="cpu",
            device_type="cpu",
            device_index=None,
            rounding=1,
            capacity=self.capacity,
            gpu_name=None,
            pid=0,
            step=0,
            model_class=None,
            param_count=None,
            trainable_param_count=None,
            optimizer_class=None,
            observed_batch=None,
            observed_seq=None,
            kv_tokens=None,
            kv_cache_reused=self.kv_cache_reused,
            autocast_dtype=None,
            checkpointing=None,
            attention_impl=None,
            training=True,
            start_time=None,
            end_time=None,
            session_dir=None,
            home=None,
        )

    @property
    def samples(self) -> Sequence[Sample]:
        return []

    @property
    def steps(self) -> Sequence[StepRecord]:
        return []

    @property
    def peaks(self) -> Peaks:
        zeros = (0,) * len(CATEGORIES)
        return Peaks(total=0, at_peak=zeros, by_category=zeros, current=zeros)

    @property
    def failure(self) -> Failure | None:
        return None

    @property
    def predicted(self) -> Mapping[Category, int | None]:
        return dict.fromkeys(CATEGORIES)

    @property
    def device_total(self) -> int | None:
        return self.capacity

    @property
    def model(self) -> Any:
        return None

    def module_activity(self) -> list[ModuleActivity]:
        return []

    def live_storages(self) -> list[LiveStorage]:
        return list(self.storages)

    def kv_caches(self) -> list[Any]:
        return list(self.caches)

    # ------------------------------------------------------------------ RunControl

    def hunt(self, steps: int) -> None:
        self.hunt_calls.append(steps)

    def emit(self, event: Event) -> None:
        self.events.append(event)


# FakeTracker must be a TrackedRun: mypy checks it member by member here
_: TrackedRun = FakeTracker()
