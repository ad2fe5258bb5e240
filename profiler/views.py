"""Result views of a run: plain functions of a :class:`~profiler.run.RunView`.

What ``mem.summary()`` and the session stream's summary and top-modules list show, computed from
the run's records only (no tracker internals, no pandas).
"""

from __future__ import annotations

from typing import Any

from profiler.records import CATEGORIES
from profiler.run import RunView

__all__ = ["summary", "top_modules"]


def summary(run: RunView) -> dict[str, Any]:
    """A JSON-able summary of the run (the stream's ``summary.json`` carries it).

    Keys: ``name``, ``mode``, ``device``, ``steps``, ``peak_bytes``, ``current_bytes``,
    ``capacity``, ``start_time``, ``end_time``, ``categories`` (category name → ``current``,
    ``peak``, ``at_peak``, ``predicted`` bytes) and ``oom`` (whether the run failed).
    """
    info = run.info
    peaks = run.peaks
    predicted = run.predicted
    current = peaks.current
    categories = {
        str(category): {
            "current": int(current[i]),
            "peak": int(peaks.by_category[i]),
            "at_peak": int(peaks.at_peak[i]),
            "predicted": predicted.get(category),
        }
        for i, category in enumerate(CATEGORIES)
    }
    return {
        "name": info.name,
        "mode": info.mode,
        "device": info.device,
        "steps": info.step,
        "peak_bytes": int(peaks.total),
        "current_bytes": int(sum(current)),
        "capacity": info.capacity,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "categories": categories,
        "oom": run.failure is not None,
    }


def top_modules(run: RunView, limit: int = 10) -> list[tuple[str, int]]:
    """The ``limit`` modules that save the most activation bytes in a step, most first.

    Modules saving nothing, or whose activations the mode does not measure, are left out; ties
    go by name.
    """
    pairs = [
        (activity.name, activity.activations)
        for activity in run.module_activity()
        if activity.activations is not None and activity.activations > 0
    ]
    pairs.sort(key=lambda pair: (-pair[1], pair[0]))
    return pairs[:limit]
