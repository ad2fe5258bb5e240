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
    "NvmlReading",
    "Phase",
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
