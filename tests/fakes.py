"""One scripted run for every analyser's tests: a :class:`~profiler.run.TrackedRun` from plain data.

``ScriptedTracker`` holds exactly what :class:`~profiler.run.RunView` exposes, set by the test, and
records what the analysers ask of the run (hunts, events). mypy checks this file (``[tool.mypy]
files``) and the assignment at the bottom makes it check the fake member by member, so a change to
the protocol that the fake does not follow fails the type check, not a test at random.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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

__all__ = ["ScriptedTracker", "session_info"]

_ZEROS = (0,) * len(CATEGORIES)


def session_info(**facts: Any) -> SessionInfo:
    """A CPU run's facts with nothing known, overridden by ``facts`` (``device="cuda:0"`` also
    sets the device type and index)."""
    device = str(facts.get("device", "cpu"))
    kind, _, index = device.partition(":")
    base = SessionInfo(
        name="scripted",
        mode="exact",
        device=device,
        device_type=kind,
        device_index=int(index) if index else None,
        rounding=1,
        capacity=None,
        gpu_name=None,
        pid=1234,
        step=0,
        model_class=None,
        param_count=None,
        trainable_param_count=None,
        optimizer_class=None,
        observed_batch=None,
        observed_seq=None,
        kv_tokens=None,
        kv_cache_reused=False,
        autocast_dtype=None,
        checkpointing=None,
        attention_impl=None,
        training=False,
        start_time=None,
        end_time=None,
        session_dir=None,
        home=None,
    )
    return dataclasses.replace(base, **facts)


@dataclass
class ScriptedTracker:
    """A run made of the records a test sets; ``events`` collects what the analysers emit."""

    info: SessionInfo = field(default_factory=session_info)
    samples: list[Sample] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    peaks: Peaks = field(default_factory=lambda: Peaks(0, _ZEROS, _ZEROS, _ZEROS))
    failure: Failure | None = None
    predicted: dict[Category, int | None] = field(default_factory=lambda: dict.fromkeys(Category))
    device_total: int | None = None
    model: Any = None
    activity: list[ModuleActivity] = field(default_factory=list)
    storages: list[LiveStorage] = field(default_factory=list)
    caches: list[Any] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    hunts: list[int] = field(default_factory=list)

    def module_activity(self) -> list[ModuleActivity]:
        return list(self.activity)

    def live_storages(self) -> list[LiveStorage]:
        return list(self.storages)

    def kv_caches(self) -> list[Any]:
        return list(self.caches)

    def hunt(self, steps: int) -> None:
        self.hunts.append(steps)

    def emit(self, event: Event) -> None:
        self.events.append(event)


# ScriptedTracker must be a TrackedRun: mypy checks it member by member here
_: TrackedRun = ScriptedTracker()
