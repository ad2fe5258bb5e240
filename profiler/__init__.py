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
    StreamError,
    TrackingError,
    UnknownNameError,
    UsageError,
)
from profiler.records import CATEGORIES, Category, Event, EventKind, Phase, Sample, StepRecord
from profiler.units import format_bytes, parse_bytes

#: Public names loaded on first use, so that ``import profiler`` stays light: no torch until the
#: tracker (or another torch-using part) is asked for, no pandas until a DataFrame is.
_LAZY = {
    "track_memory": "profiler.tracker",
    "MemoryTracker": "profiler.tracker",
    "LiveStorage": "profiler.ledger",
    "SimulatedOutOfMemoryError": "profiler.errors",
    "estimate": "profiler.predict",
    "dry_run": "profiler.dryrun",
    "Estimate": "profiler.predict",
    "DryRun": "profiler.dryrun",
    "GpuSpec": "profiler.predict",
    "GPUS": "profiler.predict",
    "preset_names": "profiler.predict",
    "find_gpu": "profiler.predict",
    "Leak": "profiler.leaks",
    "LeakPattern": "profiler.leaks",
    "Suggestion": "profiler.advice",
    "load_report": "profiler.report",
    "OomReport": "profiler.report",
    "Waterfall": "profiler.waterfall",
    "SessionReader": "profiler.session.reader",
    "load": "profiler.saved",
    "SavedRun": "profiler.saved",
}

__all__ = [
    "CATEGORIES",
    "BackendUnavailable",
    "Category",
    "ConfigError",
    "DryRun",
    "DryRunError",
    "Estimate",
    "Event",
    "EventKind",
    "GPUS",
    "GpuSpec",
    "GpumemError",
    "Leak",
    "LeakPattern",
    "LiveStorage",
    "MemoryTracker",
    "OomReport",
    "Phase",
    "Sample",
    "SavedRun",
    "SessionReader",
    "SimulatedOutOfMemoryError",
    "StepRecord",
    "StreamError",
    "Suggestion",
    "TrackingError",
    "UnknownNameError",
    "UsageError",
    "Waterfall",
    "dry_run",
    "estimate",
    "find_gpu",
    "format_bytes",
    "load",
    "load_report",
    "parse_bytes",
    "preset_names",
    "track_memory",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'profiler' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
