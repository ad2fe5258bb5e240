"""The OOM reporter: at a run's out-of-memory failure, build the report, write it, announce it.

When a ``torch.OutOfMemoryError`` (a real CUDA one, or
:class:`~profiler.errors.SimulatedOutOfMemoryError` from ``track_memory(capacity=...)``) leaves
the ``with track_memory(...)`` block, the tracker calls :func:`handle_oom`. It builds the
:class:`~profiler.report.model.OomReport` (:mod:`.build`), writes it atomically as JSON, Markdown
and HTML into the session directory or ``$GPUMEM_HOME/reports/`` (:mod:`.store`), warns its path
once and emits an ``oom`` event through the run. It never raises: the user's error must reach
them unchanged, so any failure here becomes a warning.

On CUDA the allocator's snapshot (the one taken at the failure, else one taken now) is pickled
next to the report (``<stem>.snapshot.pickle``); ``gpumem report --memory-viz`` hands it to
PyTorch's memory_viz page.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path
from typing import Any

from profiler.advice.verify import Replay
from profiler.backends import cuda
from profiler.records import Event, EventKind
from profiler.report.build import build_report
from profiler.report.model import OomReport
from profiler.report.store import report_location, write_report
from profiler.run import RunView, TrackedRun
from profiler.session.atomic import write_atomic
from profiler.units import format_bytes

__all__ = ["handle_oom", "oom_event"]


def _save_snapshot(run: RunView, directory: Path, stem: str) -> str | None:
    """Pickle the CUDA allocator's snapshot next to the report; its file name, or ``None``."""
    if run.info.device_type != "cuda":
        return None
    failure = run.failure
    snapshot = failure.snapshot if failure is not None else None  # the OOM observer's, if it ran
    if snapshot is None:
        if not cuda.is_initialized():
            return None
        snapshot = cuda.TorchCudaApi().memory_snapshot()
    name = f"{stem}.snapshot.pickle"
    write_atomic(directory / name, pickle.dumps(snapshot))
    return name


def _write(run: RunView, exc: BaseException, replay: Replay | None = None) -> OomReport:
    """Build the report and write it (with the allocator snapshot, where there is one)."""
    report = build_report(run, exc, replay)
    info = run.info
    directory, stem = report_location(info.session_dir, info.home, report.created)
    try:
        snapshot = _save_snapshot(run, directory, stem)
    except Exception as error:  # noqa: BLE001 - the snapshot is optional
        snapshot = None
        note = f"allocator snapshot unavailable: {error}"
        report = dataclasses.replace(report, notes=(*report.notes, note))
    if snapshot is not None:
        report = dataclasses.replace(report, snapshot=snapshot)
    return write_report(report, directory, stem)


def oom_event(report: OomReport) -> Event:
    """The ``oom`` event announcing a written report (its path, the failure, the top fix)."""
    data: dict[str, Any] = {
        "path": str(report.path),
        "requested": report.requested,
        "capacity": report.capacity,
        "free": report.free,
        "total": report.total,
        "phase": report.phase,
        "module": report.module,
        "simulated": report.simulated,
    }
    top = report.suggestions[0] if report.suggestions else None
    if top is not None:
        data["suggestion"] = {
            "kind": top.kind,
            "title": top.title,
            "saves_bytes": top.saves_bytes,
            "fits": top.fits,
        }
    return Event(
        time=report.created,
        step=int(report.step or 0),
        kind=EventKind.OOM,
        message=report.message or "out of memory",
        data=data,
    )


def handle_oom(
    run: TrackedRun, exc: BaseException, replay: Replay | None = None
) -> OomReport | None:
    """Build, write and announce the report of ``run``'s OOM ``exc``; never raises.

    Called by the tracker when an out-of-memory error leaves its ``with`` block, after the
    failure was recorded (``run.failure``). Writes into ``run.info.session_dir`` (or the
    ``reports/`` directory of ``run.info.home``), warns the path once and emits an ``oom`` event
    through ``run.emit``. ``replay`` verifies the suggestions (see :mod:`profiler.advice.verify`).

    Returns:
        The written report, or ``None`` (with a warning) if that failed.
    """
    try:
        report = _write(run, exc, replay)
    except Exception as error:  # noqa: BLE001 - the user's OOM must reach them unchanged
        warnings.warn(
            f"gpumem: could not write the OOM report ({type(error).__name__}: {error})",
            stacklevel=2,
        )
        return None
    assert report.path is not None
    top = report.suggestions[0] if report.suggestions else None
    message = f"gpumem: out of memory; report written to {report.path.with_suffix('.html')}"
    if top is not None:
        message += f" (top fix: {top.title}, saves {format_bytes(top.saves_bytes)})"
    # stacklevel 4: handle_oom <- the tracker's OOM handler <- __exit__ <- the user's `with` line
    warnings.warn(message, stacklevel=4)
    try:
        run.emit(oom_event(report))
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"gpumem: could not emit the OOM event ({error})", stacklevel=2)
    return report
