"""A run as one JSON document: ``mem.to_json()``, ``mem.save(path)`` and ``profiler.load(path)``.

The document holds everything the result views read (the run's facts, its samples and steps, the
peaks, the predictions, the per-module figures, the failure and the leaks found), so a loaded run
gives back the same ``breakdown()``, ``timeline()``, ``modules()``, ``metrics()``, ``summary()`` and
table as the tracker did. Schema ``gpumem.run`` version 1; a reader refuses other versions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from profiler import views
from profiler.errors import StreamError
from profiler.records import (
    CATEGORIES,
    AllocatorReading,
    Category,
    Failure,
    FailureSource,
    LiveStorage,
    ModuleActivity,
    NvmlReading,
    Peaks,
    Phase,
    Sample,
    SessionInfo,
    StepRecord,
)
from profiler.run import RunView
from profiler.session.atomic import write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SCHEMA", "VERSION", "SavedRun", "load", "run_to_dict", "save"]

SCHEMA = "gpumem.run"
VERSION = 1
#: A saved run larger than this is refused (a 50,000-sample run is ~15 MB).
MAX_BYTES = 256 * 1024 * 1024


def run_to_dict(run: RunView, *, leaks: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The whole run as plain JSON-ready data (``leaks``: each leak's ``as_dict()``)."""
    failure = run.failure
    return {
        "schema": SCHEMA,
        "v": VERSION,
        "categories": [str(c) for c in CATEGORIES],
        "info": dataclasses.asdict(run.info),
        "samples": [_sample_row(s) for s in run.samples],
        "steps": [
            [r.step, r.time, r.duration, list(r.bytes), r.total, r.peak, list(r.peak_bytes)]
            for r in run.steps
        ],
        "peaks": dataclasses.asdict(run.peaks),
        "predicted": {str(c): v for c, v in run.predicted.items()},
        "device_total": run.device_total,
        "modules": [dataclasses.asdict(a) for a in run.module_activity()],
        "failure": None if failure is None else _failure_dict(failure),
        "leaks": [dict(leak) for leak in leaks],
    }


def save(run: RunView, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write :func:`run_to_dict` to ``path`` atomically; the path."""
    text = json.dumps(run_to_dict(run, **extra), separators=(",", ":"), allow_nan=False)
    return write_text_atomic(path, text, mode=0o644)


def load(path: str | os.PathLike[str]) -> SavedRun:
    """A run saved by ``mem.save(path)``, with the same views as the tracker.

    Raises:
        StreamError: the file is missing, not a regular file, too large, not JSON, or not a
            saved run of a version this gpumem reads.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise StreamError(f"cannot open {target}: {error.strerror or error}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise StreamError(f"{target} is not a regular file")
        if status.st_size > MAX_BYTES:
            raise StreamError(f"{target} is larger than {MAX_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        return SavedRun.from_dict(document)
    except StreamError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RecursionError) as error:
        raise StreamError(
            f"{target} is not a saved gpumem run ({type(error).__name__}: {error})",
            hint="save one with mem.save(path)",
        ) from None


class SavedRun:
    """A finished run read back from its JSON document: a :class:`~profiler.run.RunView`."""

    def __init__(
        self,
        info: SessionInfo,
        samples: list[Sample],
        steps: list[StepRecord],
        peaks: Peaks,
        predicted: dict[Category, int | None],
        device_total: int | None,
        activity: list[ModuleActivity],
        failure: Failure | None,
        leaks: list[dict[str, Any]],
    ) -> None:
        self.info = info
        self.samples = samples
        self.steps = steps
        self.peaks = peaks
        self.predicted = predicted
        self.device_total = device_total
        self.failure = failure
        #: The leaks the run found, as the session stream writes them.
        self.leaks = leaks
        self._activity = activity
        self.model: Any = None

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> SavedRun:
        """Rebuild a run from :func:`run_to_dict`'s output (``ValueError`` when malformed)."""
        if document.get("schema") != SCHEMA:
            raise ValueError("not a gpumem.run document")
        if document.get("v") != VERSION:
            raise StreamError(f"unsupported saved-run schema v{document.get('v')}")
        if list(document["categories"]) != [str(c) for c in CATEGORIES]:
            raise ValueError("its categories are not this gpumem's")
        predicted = document["predicted"]
        return cls(
            info=SessionInfo(**document["info"]),
            samples=[_sample(row) for row in document["samples"]],
            steps=[_step(row) for row in document["steps"]],
            peaks=_peaks(document["peaks"]),
            predicted={c: _optional_int(predicted.get(str(c))) for c in CATEGORIES},
            device_total=_optional_int(document["device_total"]),
            activity=[ModuleActivity(**a) for a in document["modules"]],
            failure=_failure(document["failure"]),
            leaks=[dict(leak) for leak in document["leaks"]],
        )

    def module_activity(self) -> list[ModuleActivity]:
        """The per-module figures as they were at the end."""
        return list(self._activity)

    def live_storages(self) -> list[LiveStorage]:
        """The largest storages alive at the failure (none without one)."""
        return list(self.failure.live) if self.failure is not None else []

    def kv_caches(self) -> list[Any]:
        """No live objects come back from a file."""
        return []

    # the tracker's result views, on the saved run
    def breakdown(self) -> pd.DataFrame:
        """See :meth:`profiler.tracker.MemoryTracker.breakdown`."""
        return views.breakdown(self)

    def timeline(self) -> pd.DataFrame:
        """See :meth:`profiler.tracker.MemoryTracker.timeline`."""
        return views.timeline(self)

    def modules(self) -> pd.DataFrame:
        """See :meth:`profiler.tracker.MemoryTracker.modules`."""
        return views.modules(self)

    def metrics(self) -> dict[str, int]:
        """See :func:`profiler.views.metrics`."""
        return views.metrics(self, leaks=len(self.leaks))

    def summary(self) -> dict[str, Any]:
        """See :func:`profiler.views.summary`."""
        return views.summary(self)

    def plot(self, ax: Any = None) -> Any:
        """See :func:`profiler.plot.plot`."""
        from profiler.plot import plot  # matplotlib: only when a plot is asked for

        return plot(self, ax)

    def __str__(self) -> str:
        return views.table(self)

    def __repr__(self) -> str:
        return f"<SavedRun {self.info.name!r} mode={self.info.mode} peak={self.peaks.total}>"


# -- rows -------------------------------------------------------------------------------------


def _sample_row(s: Sample) -> list[Any]:
    allocator = None if s.allocator is None else dataclasses.asdict(s.allocator)
    nvml = None if s.nvml is None else dataclasses.asdict(s.nvml)
    return [s.time, s.step, str(s.phase), s.module, list(s.bytes), s.total, allocator, nvml]


def _sample(row: Sequence[Any]) -> Sample:
    time, step, phase, module, values, total, allocator, nvml = row
    return Sample(
        time=float(time),
        step=int(step),
        phase=Phase(phase),
        module=None if module is None else str(module),
        bytes=_ints(values),
        total=int(total),
        allocator=None if allocator is None else AllocatorReading(**allocator),
        nvml=None if nvml is None else NvmlReading(**nvml),
    )


def _step(row: Sequence[Any]) -> StepRecord:
    step, time, duration, values, total, peak, peak_bytes = row
    return StepRecord(
        int(step), float(time), float(duration), _ints(values), int(total), int(peak),
        _ints(peak_bytes),
    )  # fmt: skip


def _failure_dict(failure: Failure) -> dict[str, Any]:
    return {
        "source": str(failure.source),
        "sample": _sample_row(failure.sample),
        "requested": failure.requested,
        "capacity": failure.capacity,
        "free": failure.free,
        "live": [{**dataclasses.asdict(s), "category": str(s.category)} for s in failure.live],
    }


def _failure(data: Mapping[str, Any] | None) -> Failure | None:
    if data is None:
        return None
    live = []
    for s in data["live"]:
        live.append(
            LiveStorage(
                nbytes=int(s["nbytes"]),
                category=Category(s["category"]),
                module=s["module"],
                step=int(s["step"]),
                site=s["site"],
                stack=None if s["stack"] is None else tuple(s["stack"]),
                shape=None if s["shape"] is None else tuple(int(d) for d in s["shape"]),
                dtype=s["dtype"],
            )
        )
    return Failure(
        source=FailureSource(data["source"]),
        sample=_sample(data["sample"]),
        requested=_optional_int(data["requested"]),
        capacity=_optional_int(data["capacity"]),
        free=_optional_int(data["free"]),
        live=tuple(live),
    )


def _peaks(data: Mapping[str, Any]) -> Peaks:
    return Peaks(
        total=int(data["total"]),
        at_peak=_ints(data["at_peak"]),
        by_category=_ints(data["by_category"]),
        current=_ints(data["current"]),
    )


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    result = tuple(int(v) for v in values)
    if len(result) != len(CATEGORIES):
        raise ValueError(f"{len(result)} values for {len(CATEGORIES)} categories")
    return result


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a non-finite number")
    return int(value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a saved run holds")


_conforms: type[RunView] = SavedRun  # mypy: a saved run is a RunView
