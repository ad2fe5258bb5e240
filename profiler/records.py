"""Small immutable records that flow from the tracker to the API, the stream and the analysers.

Everything here is plain data: ``int`` bytes, ``float`` seconds since the epoch, ``str`` enums.
Nothing here imports pandas or touches a device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "CATEGORIES",
    "AllocatorReading",
    "Category",
    "Event",
    "EventKind",
    "Failure",
    "FailureSource",
    "LiveStorage",
    "ModuleActivity",
    "NvmlReading",
    "Peaks",
    "Phase",
    "SessionInfo",
    "Sample",
    "StepRecord",
]


class Category(StrEnum):
    """What a byte is for. Every tracked byte is in exactly one category."""

    WEIGHTS = "weights"
    BUFFERS = "buffers"
    GRADIENTS = "gradients"
    OPTIMIZER = "optimizer"
    ACTIVATIONS = "activations"
    KV_CACHE = "kv_cache"
    TEMPORARIES = "temporaries"
    OTHER = "other"


#: The categories in their fixed order; per-category tuples in records follow it.
CATEGORIES: tuple[Category, ...] = tuple(Category)


class Phase(StrEnum):
    """Where in a training or inference step the program is."""

    IDLE = "idle"
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


class EventKind(StrEnum):
    """What an :class:`Event` reports."""

    START = "start"
    STEP_END = "step_end"
    LEAK = "leak"
    LEAK_HUNT = "leak_hunt"
    OOM = "oom"
    SUGGESTION = "suggestion"
    WARNING = "warning"
    PREDICTION = "prediction"
    END = "end"


@dataclass(frozen=True, slots=True)
class AllocatorReading:
    """The CUDA caching allocator's own figures for one device (bytes)."""

    allocated: int
    reserved: int
    active: int | None = None
    inactive_split: int | None = None
    peak_allocated: int | None = None
    num_alloc_retries: int | None = None
    num_ooms: int | None = None


@dataclass(frozen=True, slots=True)
class NvmlReading:
    """What NVML says about the device and this process on it (bytes)."""

    process_used: int | None
    device_used: int | None
    device_total: int | None
    device_index: int | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement: bytes per category (in :data:`CATEGORIES` order) at a moment."""

    time: float
    step: int
    phase: Phase
    module: str | None
    bytes: tuple[int, ...]
    total: int
    allocator: AllocatorReading | None = None
    nvml: NvmlReading | None = None

    def by_category(self) -> dict[Category, int]:
        """The bytes as a mapping from category to bytes."""
        return dict(zip(CATEGORIES, self.bytes, strict=True))


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What one finished step looked like: the analysers (leaks, OOM risk) are fed these."""

    step: int
    time: float
    duration: float
    bytes: tuple[int, ...]
    total: int
    peak: int
    peak_bytes: tuple[int, ...]

    def by_category(self) -> dict[Category, int]:
        """Bytes at the step's end, per category."""
        return dict(zip(CATEGORIES, self.bytes, strict=True))


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened in a session: a step end, a leak alert, an OOM, a suggestion."""

    time: float
    step: int
    kind: EventKind
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LiveStorage:
    """A storage alive now, as the analysers (leaks, OOM report) see it."""

    nbytes: int
    category: Category
    module: str | None
    step: int
    site: str | None
    stack: tuple[str, ...] | None
    shape: tuple[int, ...] | None
    dtype: str | None


class FailureSource(StrEnum):
    """Who saw an out-of-memory failure first."""

    #: A simulated capacity (``capacity=`` / ``gpu=``) would have been exceeded.
    SIMULATED = "simulated"
    #: The CUDA caching allocator's OOM observer, at the failing allocation.
    ALLOCATOR = "allocator"
    #: Only the ``torch.OutOfMemoryError`` reaching the block's end (its message parsed).
    EXCEPTION = "exception"


@dataclass(frozen=True, slots=True)
class Failure:
    """An out-of-memory failure, built once where it is seen, with the sample taken at it.

    ``sample`` is the measurement at the failing allocation (before it): its bytes, phase, step
    and module are the failure's. ``requested`` is the allocation that failed; ``capacity`` and
    ``free`` the device's (or the simulated) size and what was free, where known.
    """

    source: FailureSource
    sample: Sample
    requested: int | None
    capacity: int | None
    free: int | None
    live: tuple[LiveStorage, ...] = ()
    snapshot: Mapping[str, Any] | None = None

    @property
    def simulated(self) -> bool:
        """Whether the capacity was simulated (no real device ran out)."""
        return self.source is FailureSource.SIMULATED

    @property
    def time(self) -> float:
        """When it failed (seconds since the epoch): the sample's time."""
        return self.sample.time

    @property
    def total(self) -> int:
        """The tracked bytes at the failure, without the failed request."""
        return self.sample.total

    @property
    def phase(self) -> Phase:
        """The phase in flight at the failure."""
        return self.sample.phase

    @property
    def step(self) -> int:
        """The step in flight at the failure."""
        return self.sample.step

    @property
    def module(self) -> str | None:
        """The innermost module running at the failure (``None`` outside every module)."""
        return self.sample.module


@dataclass(frozen=True, slots=True)
class Peaks:
    """The highest total and how it split, each category's own highest, and the bytes now."""

    total: int
    at_peak: tuple[int, ...]
    by_category: tuple[int, ...]
    current: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModuleActivity:
    """What one module (by fully qualified name) did across the run.

    ``activations`` is what the module itself saved for backward in one step (the most in any
    step; children's savings are theirs), ``activations_inclusive`` adds its descendants'.
    ``forward_peak``/``backward_peak`` are the highest total above the one at the module's start
    while its forward/backward ran. ``None`` where the mode does not measure it (backward peaks
    need exact mode; fast mode without per-module counter reads measures calls only).
    """

    name: str
    calls: int
    activations: int | None
    activations_inclusive: int | None
    forward_peak: int | None
    backward_peak: int | None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The facts of a tracked run that are not measurements: what, where, how, as seen so far."""

    name: str
    mode: str
    device: str
    device_type: str
    device_index: int | None
    rounding: int
    capacity: int | None
    gpu_name: str | None
    pid: int
    step: int
    model_class: str | None
    param_count: int | None
    trainable_param_count: int | None
    optimizer_class: str | None
    observed_batch: int | None
    observed_seq: int | None
    kv_tokens: int | None
    kv_cache_reused: bool
    autocast_dtype: str | None
    checkpointing: bool | None
    attention_impl: str | None
    training: bool
    start_time: float | None
    end_time: float | None
    session_dir: str | None
    home: str | None
    #: this process's place in a distributed job (:mod:`profiler.ranks`), ``None`` if not one
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    job_id: str | None = None
