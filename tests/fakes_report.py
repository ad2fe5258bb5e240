"""A scripted run for the report, advice and waterfall tests: a :class:`TrackedRun` from plain data.

``ScriptedTracker`` holds exactly what :class:`~profiler.run.RunView` exposes, set by the test;
mypy checks it against the protocol (this file is listed in ``[tool.mypy] files``), so a change
to ``RunView`` that the fake does not follow fails the type check, not a test at random.
``cuda_oom_run`` is a real CUDA OOM as the tracker records it (on CPU, no device needed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.records import (
    CATEGORIES,
    AllocatorReading,
    Category,
    Event,
    Failure,
    FailureSource,
    LiveStorage,
    ModuleActivity,
    Peaks,
    Phase,
    Sample,
    SessionInfo,
    StepRecord,
)
from profiler.run import TrackedRun

__all__ = ["AT_FAILURE", "GiB", "SNAPSHOT", "ScriptedTracker", "cuda_oom_run", "session_info"]

GiB = 1024**3
#: At the failure: weights, gradients, optimizer state 20 GiB each, activations 10 GiB.
AT_FAILURE = (20 * GiB, 0, 20 * GiB, 20 * GiB, 10 * GiB, 0, 0, 0)
SNAPSHOT: Mapping[str, Any] = {
    "segments": [{"device": 0, "total_size": 2 * GiB, "blocks": []}],
    "device_traces": [],
}
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


def cuda_oom_run(session: Path) -> ScriptedTracker:
    """A fast-mode run on ``cuda:0`` that a real CUDA OOM stopped in backward (80 GiB device).

    The samples carry allocator readings (70 GiB allocated, 76 GiB reserved, 5 GiB of it split),
    the failure was seen by the allocator's OOM observer (2 GiB asked, 1 GiB free) with its
    snapshot, and the report goes into ``session``.
    """
    reading = AllocatorReading(allocated=70 * GiB, reserved=76 * GiB, inactive_split=5 * GiB)
    forward = (20 * GiB, 0, 0, 20 * GiB, 0, 0, 0, 0)
    samples = [
        Sample(100.0, 0, Phase.FORWARD, "model", forward, 40 * GiB, reading),
        Sample(101.0, 0, Phase.BACKWARD, "model.layers.3", AT_FAILURE, 70 * GiB, reading),
    ]
    activations = LiveStorage(
        4 * GiB,
        Category.ACTIVATIONS,
        "model.layers.3.mlp",
        0,
        "train.py:88",
        None,
        (8, 4096, 32768),
        "bfloat16",
    )
    return ScriptedTracker(
        info=session_info(
            device="cuda:0",
            mode="fast",
            session_dir=str(session),
            model_class="LlamaForCausalLM",
            param_count=5 * GiB,
            trainable_param_count=5 * GiB,
            optimizer_class="AdamW",
            observed_batch=8,
            observed_seq=4096,
            autocast_dtype="bfloat16",
            checkpointing=True,
            training=True,
        ),
        samples=samples,
        peaks=Peaks(70 * GiB, AT_FAILURE, AT_FAILURE, AT_FAILURE),
        failure=Failure(
            source=FailureSource.ALLOCATOR,
            sample=samples[-1],
            requested=2 * GiB,
            capacity=80 * GiB,
            free=1 * GiB,
            snapshot=SNAPSHOT,
        ),
        storages=[activations],
    )


def _conforms(session: Path) -> None:
    """Never called: mypy checks here that the fake is a :class:`TrackedRun`."""
    _: TrackedRun = ScriptedTracker()
    _ = cuda_oom_run(session)
