"""The out-of-memory post-mortem: build the report from a tracker at its OOM, write it, read it.

When a ``torch.OutOfMemoryError`` (a real CUDA one, or
:class:`~profiler.errors.SimulatedOutOfMemoryError` from ``track_memory(capacity=...)``) leaves
the ``with track_memory(...)`` block, the tracker calls :func:`handle_oom`. It builds an
:class:`~profiler.report.model.OomReport` (device and capacity, requested and free bytes, the
waterfall and breakdown at the failure, the largest live tensors, fragmentation, other
processes, the timeline, predicted vs measured and the ranked fix suggestions), writes it
atomically as JSON, Markdown and HTML into the session directory (or
``$GPUMEM_HOME/reports/``), warns its path once and emits an ``oom`` event. It never raises:
the user's error must reach them unchanged, so any failure here becomes a warning.

On CUDA the allocator's snapshot is pickled next to the report (``<stem>.snapshot.pickle``);
``gpumem report --memory-viz`` hands it to PyTorch's memory_viz page.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from profiler.errors import StreamError
from profiler.records import CATEGORIES, Event, EventKind, Sample
from profiler.report.model import (
    CategoryRow,
    Fragmentation,
    OomReport,
    ProcessRow,
    RunInfo,
    TensorRow,
    TimelinePoint,
    WaterfallRow,
    report_from_json,
    report_to_json,
)
from profiler.units import format_bytes

__all__ = [
    "REPORT_STEM",
    "build_report",
    "find_report",
    "handle_oom",
    "load_report",
    "reports_dir",
    "write_report",
]

#: File stem of the report inside a session directory.
REPORT_STEM = "oom_report"
#: At most this many timeline points go into a report (the rest are thinned, the peak kept).
MAX_TIMELINE_POINTS = 400
#: The largest live tensors listed.
MAX_TENSORS = 20


# -- building ---------------------------------------------------------------------------------


def _thin(samples: list[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples, evenly spread, always keeping the highest and the last."""
    if len(samples) <= limit:
        return samples
    stride = len(samples) / (limit - 2)
    keep = {int(i * stride) for i in range(limit - 2)}
    keep.add(len(samples) - 1)
    keep.add(max(range(len(samples)), key=lambda i: samples[i].total))
    return [samples[i] for i in sorted(keep)]


def _waterfall_rows(
    tracker: Any, current: tuple[int, ...], capacity: int | None, free: int | None
) -> tuple[WaterfallRow, ...]:
    """The device waterfall: from NVML and the allocator on CUDA, from the ledger elsewhere."""
    rows: list[WaterfallRow] = []
    device = getattr(tracker, "device", None)
    if getattr(device, "type", None) == "cuda":
        try:
            wf = tracker.waterfall()
        except Exception:  # noqa: BLE001 - the waterfall is optional
            wf = None
        if wf is not None:
            if capacity is not None:
                rows.append(WaterfallRow("device capacity", capacity, 0))
                rows.append(WaterfallRow("free", free, 1))
            rows.append(WaterfallRow("used by this process (NVML)", wf.nvml_process_used, 1))
            rows.append(WaterfallRow("CUDA context + outside PyTorch", wf.outside_pytorch, 2))
            rows.append(WaterfallRow("PyTorch reserved", wf.reserved, 2))
            rows.append(WaterfallRow("cached but free", wf.cached_free, 3))
            rows.append(WaterfallRow("allocated", wf.allocated, 3))
            for category, value in zip(CATEGORIES, current, strict=True):
                if value:
                    rows.append(WaterfallRow(str(category), value, 4))
            return tuple(rows)
    label = (
        "simulated capacity"
        if getattr(tracker, "gpu_name", None) is None
        else (f"simulated {tracker.gpu_name}")
    )
    if capacity is not None:
        rows.append(WaterfallRow(label, capacity, 0))
        rows.append(WaterfallRow("free", free, 1))
    rows.append(WaterfallRow("tracked tensors", sum(current), 1))
    for category, value in zip(CATEGORIES, current, strict=True):
        if value:
            rows.append(WaterfallRow(str(category), value, 2))
    return tuple(rows)


def _fragmentation(tracker: Any, sample: Sample | None) -> Fragmentation | None:
    allocator = getattr(sample, "allocator", None)
    if allocator is None:
        return None
    largest = segments = None
    try:
        from profiler.backends import cuda

        device = getattr(tracker, "device", None)
        found = cuda.segment_map(getattr(device, "index", None))
        if found:
            segments = len(found)
            largest = max(s.largest_free_block for s in found)
    except Exception:  # noqa: BLE001 - the segment map is optional
        pass
    return Fragmentation(
        reserved=int(allocator.reserved),
        allocated=int(allocator.allocated),
        inactive_split=allocator.inactive_split,
        largest_free_block=largest,
        segments=segments,
    )


def _processes(tracker: Any) -> tuple[ProcessRow, ...] | None:
    """Other processes on the tracker's GPU; ``None`` where that cannot be known (no NVML)."""
    device = getattr(tracker, "device", None)
    if getattr(device, "type", None) != "cuda":
        return None
    try:
        from profiler.backends import nvml

        source = nvml.default_source()
        index = source.nvml_index(getattr(device, "index", None))
        own = getattr(tracker, "pid", os.getpid())
        return tuple(
            ProcessRow(pid=p.pid, gpu_memory=p.gpu_memory, name=p.name)
            for p in source.processes()
            if p.pid != own and (index is None or p.device_index == index)
        )
    except Exception:  # noqa: BLE001 - NVML is optional
        return None


def _tensors(tracker: Any) -> tuple[TensorRow, ...]:
    failure = tracker.failure
    live = failure.live if failure is not None else None
    if not live:
        try:
            live = tracker.ledger.live_storages()
        except Exception:  # noqa: BLE001
            live = []
    rows = []
    for storage in list(live)[:MAX_TENSORS]:
        rows.append(
            TensorRow(
                nbytes=int(storage.nbytes),
                category=str(storage.category),
                module=storage.module,
                step=storage.step,
                site=storage.site,
                shape=None if storage.shape is None else tuple(int(d) for d in storage.shape),
                dtype=storage.dtype,
            )
        )
    return tuple(rows)


def _gap_explainer(tracker: Any, samples: list[Sample]) -> Any:
    """``explain(category, measured, predicted)``: the likely cause of a forecast's miss."""
    try:
        from profiler.predict.compare import explain_gap
    except ImportError:
        return lambda category, measured, predicted: None
    autocast = getattr(tracker, "autocast_dtype", None)
    context = {
        "rounding": getattr(tracker, "rounding", 1),
        "autocast_dtype": None if autocast is None else str(autocast).removeprefix("torch."),
        "attention_impl": getattr(tracker, "attention_impl", None),
        "optimizer_class": getattr(tracker, "optimizer_class", None),
        "training": any(str(s.phase) == "backward" for s in samples),
        "device": str(getattr(tracker, "device", "")),
    }

    def explain(category: str, measured: int, predicted: int | None) -> str | None:
        if predicted is None:
            return None
        try:
            return str(explain_gap(category, measured, predicted, context))
        except Exception:  # noqa: BLE001 - words are optional
            return None

    return explain


def build_report(tracker: Any, exc: BaseException | None = None) -> OomReport:
    """The post-mortem of ``tracker``'s out-of-memory failure (not written anywhere yet)."""
    from profiler.advice import facts_from_tracker, rank

    failure = tracker.failure
    samples: list[Sample] = list(getattr(tracker, "samples", []) or [])
    ledger = tracker.ledger
    at_failure = failure.sample if failure is not None else (samples[-1] if samples else None)
    current = tuple(at_failure.bytes) if at_failure is not None else tuple(ledger.current)
    capacity = (failure.capacity if failure is not None else None) or getattr(
        tracker, "capacity", None
    )
    capacity = None if capacity is None else int(capacity)
    total = failure.total if failure is not None else sum(current)
    free = failure.free if failure is not None else None
    if free is None and capacity is not None:
        free = max(capacity - total, 0)
    simulated = (
        failure.simulated
        if failure is not None
        else type(exc).__name__ == "SimulatedOutOfMemoryError"
    )
    predicted = getattr(tracker, "predicted", {}) or {}
    explain = _gap_explainer(tracker, samples)
    breakdown = tuple(
        CategoryRow(
            category=str(category),
            current=int(current[i]),
            peak=int(ledger.category_peak[i]),
            at_peak=int(ledger.at_peak[i]),
            predicted=None if predicted.get(category) is None else int(predicted[category]),
            gap=explain(
                str(category),
                int(ledger.category_peak[i]),
                None if predicted.get(category) is None else int(predicted[category]),
            ),
        )
        for i, category in enumerate(CATEGORIES)
    )
    timeline = tuple(
        TimelinePoint(
            time=float(s.time),
            step=int(s.step),
            phase=str(s.phase),
            bytes=tuple(int(v) for v in s.bytes),
            total=int(s.total),
        )
        for s in _thin(samples, MAX_TIMELINE_POINTS)
    )
    notes: list[str] = []
    try:
        suggestions = tuple(rank(facts_from_tracker(tracker), capacity))
    except Exception as error:  # noqa: BLE001 - a report without advice beats no report
        suggestions = ()
        notes.append(f"suggestions unavailable: {type(error).__name__}: {error}")
    autocast = getattr(tracker, "autocast_dtype", None)
    run = RunInfo(
        model_class=getattr(tracker, "model_class", None),
        param_count=getattr(tracker, "param_count", None),
        trainable_param_count=getattr(tracker, "trainable_param_count", None),
        optimizer_class=getattr(tracker, "optimizer_class", None),
        batch=getattr(tracker, "observed_batch", None),
        seq=getattr(tracker, "observed_seq", None),
        autocast_dtype=None if autocast is None else str(autocast).removeprefix("torch."),
        checkpointing=getattr(tracker, "checkpointing", None),
        mode=getattr(tracker, "mode", None),
    )
    device = getattr(tracker, "device", None)
    if getattr(device, "type", None) != "cuda" and not simulated:
        notes.append("no GPU: the waterfall shows tracked tensors only")
    return OomReport(
        created=failure.time if failure is not None else time.time(),
        simulated=simulated,
        message=str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "",
        device=str(device) if device is not None else "unknown",
        gpu_name=getattr(tracker, "gpu_name", None),
        capacity=capacity,
        requested=failure.requested if failure is not None else None,
        free=None if free is None else int(free),
        total=total,
        phase=str(failure.phase) if failure is not None else None,
        step=failure.step if failure is not None else None,
        module=failure.module if failure is not None else None,
        peak=int(getattr(ledger, "peak", 0)) or None,
        run=run,
        categories=tuple(str(c) for c in CATEGORIES),
        breakdown=breakdown,
        waterfall=_waterfall_rows(tracker, current, capacity, free),
        tensors=_tensors(tracker),
        fragmentation=_fragmentation(tracker, at_failure),
        processes=_processes(tracker),
        timeline=timeline,
        suggestions=suggestions,
        notes=tuple(notes),
    )


# -- writing ----------------------------------------------------------------------------------


def reports_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``<gpumem home>/reports``, created with mode 0700: where reports go without a session."""
    from profiler.session.layout import gpumem_home

    path = gpumem_home(home) / "reports"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, text.encode("utf-8"))


def write_report(report: OomReport, directory: Path, stem: str = REPORT_STEM) -> OomReport:
    """Write ``report`` as ``<stem>.json``, ``.md`` and ``.html`` into ``directory``, atomically.

    The JSON is written last, so a reader that finds it finds the other two as well.

    Returns:
        The report with ``path`` set to the JSON file.
    """
    from dataclasses import replace

    from profiler.report.render_html import render_html
    from profiler.report.render_md import render_markdown

    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{stem}.json"
    written = replace(report, path=path)
    _write_text_atomic(path.with_suffix(".md"), render_markdown(written))
    _write_text_atomic(path.with_suffix(".html"), render_html(written))
    _write_text_atomic(path, report_to_json(written) + "\n")
    return written


def _save_snapshot(tracker: Any, directory: Path, stem: str) -> str | None:
    """Pickle the CUDA allocator's snapshot next to the report; its file name, or ``None``."""
    device = getattr(tracker, "device", None)
    if getattr(device, "type", None) != "cuda":
        return None
    import pickle

    from profiler.backends import cuda

    failure = tracker.failure
    # taken by the allocator's OOM observer, if it ran
    snapshot = failure.snapshot if failure is not None else None
    if snapshot is None:
        if not cuda.is_initialized():
            return None
        snapshot = cuda.TorchCudaApi().memory_snapshot()
    name = f"{stem}.snapshot.pickle"
    _write_atomic(directory / name, pickle.dumps(snapshot))
    return name


def handle_oom(tracker: Any, exc: BaseException) -> OomReport | None:
    """Build, write and announce the report of ``tracker``'s OOM; never raises.

    Called by the tracker when an out-of-memory error leaves its ``with`` block. Writes into
    ``tracker.session_dir`` (or ``$GPUMEM_HOME/reports/``), warns the path once and emits an
    ``oom`` event. Returns the written report, or ``None`` (with a warning) if that failed.
    """
    try:
        report = build_report(tracker, exc)
        session = getattr(tracker, "session_dir", None)
        if session is not None:
            directory, stem = Path(session), REPORT_STEM
        else:
            home = getattr(tracker, "_home", None)
            directory = reports_dir(home)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(report.created))
            stem = f"oom-{stamp}-{os.getpid()}"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            snapshot = _save_snapshot(tracker, directory, stem)
        except Exception as error:  # noqa: BLE001 - the snapshot is optional
            snapshot = None
            report = _with_note(report, f"allocator snapshot unavailable: {error}")
        if snapshot is not None:
            from dataclasses import replace

            report = replace(report, snapshot=snapshot)
        report = write_report(report, directory, stem)
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
    # stacklevel 4: handle_oom <- tracker._handle_oom <- __exit__ <- the user's `with` line
    warnings.warn(message, stacklevel=4)
    try:
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
        if top is not None:
            data["suggestion"] = {
                "kind": top.kind,
                "title": top.title,
                "saves_bytes": top.saves_bytes,
                "fits": top.fits,
            }
        tracker.emit(
            Event(
                time=report.created,
                step=int(report.step or 0),
                kind=EventKind.OOM,
                message=report.message or "out of memory",
                data=data,
            )
        )
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"gpumem: could not emit the OOM event ({error})", stacklevel=2)
    return report


def _with_note(report: OomReport, note: str) -> OomReport:
    from dataclasses import replace

    return replace(report, notes=(*report.notes, note))


# -- reading ----------------------------------------------------------------------------------


def load_report(path: str | os.PathLike[str]) -> OomReport:
    """Read a report written by :func:`write_report`.

    Raises:
        StreamError: the file is missing, unreadable, torn, corrupt, or not a report.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StreamError(f"no report at {path}") from None
    except IsADirectoryError:
        raise StreamError(f"{path} is a directory, not a report") from None
    except OSError as exc:
        raise StreamError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamError(f"{path} is not a gpumem report (not UTF-8 text)") from None
    from dataclasses import replace

    return replace(report_from_json(text, source=str(path)), path=path)


def _newest(paths: list[Path]) -> Path | None:
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return max(paths, key=mtime) if paths else None


def find_report(target: str, home: str | os.PathLike[str] | None = None) -> Path:
    """The report JSON that ``target`` names.

    ``target`` is a report file (``.json``, or its ``.md``/``.html`` sibling), a session
    directory, a session's name or id under ``$GPUMEM_HOME/sessions``, or ``latest`` (the newest
    report anywhere under the home).

    Raises:
        StreamError: nothing found.
    """
    path = Path(target).expanduser()
    if path.is_file():
        if path.suffix in (".md", ".html"):
            sibling = path.with_suffix(".json")
            if sibling.is_file():
                return sibling
        return path
    if path.is_dir():
        inside = path / f"{REPORT_STEM}.json"
        if inside.is_file():
            return inside
        found = _newest(sorted(path.glob("*.json")))
        if found is not None and found.name not in ("meta.json", "summary.json", "modules.json"):
            return found
        raise StreamError(f"no OOM report in {path}", hint="the session ended without an OOM")
    from profiler.session.layout import gpumem_home

    root = gpumem_home(home, create=False)
    if target == "latest":
        candidates = list((root / "sessions").glob(f"*/{REPORT_STEM}.json"))
        candidates += list((root / "reports").glob("oom-*.json"))
        found = _newest(candidates)
        if found is None:
            raise StreamError(f"no OOM report under {root}")
        return found
    sessions = root / "sessions"
    matches = sorted(
        d for d in sessions.glob("*") if d.is_dir() and (d.name == target or target in d.name)
    )
    with_report = [d / f"{REPORT_STEM}.json" for d in matches]
    with_report = [p for p in with_report if p.is_file()]
    found = _newest(with_report)
    if found is not None:
        return found
    if matches:
        raise StreamError(
            f"session {target!r} has no OOM report", hint="the session ended without an OOM"
        )
    raise StreamError(
        f"no report file or session named {target!r}",
        hint=f"give a report path, a session directory, or a session name under {sessions}",
    )
