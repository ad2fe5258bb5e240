"""gpumem: a live GPU memory profiler for PyTorch.

``with track_memory(model, optimizer) as mem:`` attributes every byte to a category (weights,
buffers, gradients, optimizer, activations, kv_cache, temporaries, other) and a module, step by
step; ``print(mem)`` shows the table, ``mem.breakdown()``, ``mem.timeline()`` and ``mem.modules()``
give DataFrames.
"""

from __future__ import annotations

from typing import Any

from profiler.errors import (
    BackendUnavailable,
    ConfigError,
    DryRunError,
    GpumemError,
    SimulatedOutOfMemoryError,
    StreamError,
    TrackingError,
    UnknownNameError,
    UsageError,
)
from profiler.ledger import LiveStorage
from profiler.records import CATEGORIES, Category, Event, EventKind, Phase, Sample, StepRecord
from profiler.tracker import MemoryTracker, track_memory
from profiler.units import format_bytes, parse_bytes

__all__ = [
    "CATEGORIES",
    "BackendUnavailable",
    "Category",
    "ConfigError",
    "DryRunError",
    "Event",
    "EventKind",
    "GpumemError",
    "LiveStorage",
    "MemoryTracker",
    "Phase",
    "Sample",
    "SimulatedOutOfMemoryError",
    "StepRecord",
    "StreamError",
    "TrackingError",
    "UnknownNameError",
    "UsageError",
    "dry_run",
    "estimate",
    "format_bytes",
    "parse_bytes",
    "track_memory",
]


def estimate(*args: Any, **kwargs: Any) -> Any:
    """What a model needs per category in a precision and mode (see :mod:`profiler.predict`)."""
    from profiler.predict import estimate as _estimate

    return _estimate(*args, **kwargs)


def dry_run(*args: Any, **kwargs: Any) -> Any:
    """Measure a build + step on fake tensors, without allocating (see :mod:`profiler.predict`)."""
    from profiler.predict import dry_run as _dry_run

    return _dry_run(*args, **kwargs)
