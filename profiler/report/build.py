"""Building the OOM post-mortem from a run at its failure: an :class:`OomReport`, not written yet.

Everything is read through :class:`~profiler.run.RunView`: the failure and the sample taken at it
(the bytes, phase, step and module at the failure), the peaks, the samples (the timeline), the
live storages, the predictions and the run's facts; on CUDA the allocator's figures and snapshot
at the failure and what NVML says about other processes. The suggestions come from
:mod:`profiler.advice`, sized from the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from profiler.advice import facts_from_run, rank
from profiler.advice.reading import other_processes
from profiler.advice.verify import Replay
from profiler.backends import cuda
from profiler.predict.compare import explain_gap
from profiler.records import CATEGORIES, Sample, SessionInfo
from profiler.report.model import (
    CategoryRow,
    Fragmentation,
    OomReport,
    ProcessRow,
    RunInfo,
    TensorRow,
    TimelinePoint,
    WaterfallRow,
)
from profiler.run import RunView
from profiler.waterfall import Waterfall, waterfall_at_failure

__all__ = ["MAX_TENSORS", "MAX_TIMELINE_POINTS", "build_report"]

#: At most this many timeline points go into a report (the rest are thinned, the peak kept).
MAX_TIMELINE_POINTS = 400
#: The largest live tensors listed.
MAX_TENSORS = 20

#: ``explain(category, measured, predicted)``: the likely cause of a forecast's miss, in words.
Explainer = Callable[[str, int, int | None], str | None]


def _thin(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples, evenly spread, always keeping the highest and the last."""
    if len(samples) <= limit:
        return list(samples)
    stride = len(samples) / (limit - 2)
    keep = {int(i * stride) for i in range(limit - 2)}
    keep.add(len(samples) - 1)
    keep.add(max(range(len(samples)), key=lambda i: samples[i].total))
    return [samples[i] for i in sorted(keep)]


def _device_waterfall(run: RunView) -> Waterfall | None:
    """The CUDA waterfall at the failure; ``None`` off CUDA (or where it cannot be made)."""
    if run.info.device_type != "cuda":
        return None
    try:
        return waterfall_at_failure(run)
    except Exception:  # noqa: BLE001 - the waterfall is optional
        return None


def _waterfall_rows(
    info: SessionInfo,
    wf: Waterfall | None,
    current: tuple[int, ...],
    capacity: int | None,
    free: int | None,
) -> tuple[WaterfallRow, ...]:
    """The device waterfall: from NVML and the allocator on CUDA, from the tracked bytes elsewhere."""
    rows: list[WaterfallRow] = []
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
    label = "simulated capacity" if info.gpu_name is None else f"simulated {info.gpu_name}"
    if capacity is not None:
        rows.append(WaterfallRow(label, capacity, 0))
        rows.append(WaterfallRow("free", free, 1))
    rows.append(WaterfallRow("tracked tensors", sum(current), 1))
    for category, value in zip(CATEGORIES, current, strict=True):
        if value:
            rows.append(WaterfallRow(str(category), value, 2))
    return tuple(rows)


def _segments(run: RunView) -> list[cuda.Segment] | None:
    """The allocator's segments: from the snapshot taken at the failure, else as they are now."""
    failure = run.failure
    index = run.info.device_index
    try:
        if failure is not None and failure.snapshot:
            return cuda.segments_from_snapshot(failure.snapshot, index)
        return cuda.segment_map(index)
    except Exception:  # noqa: BLE001 - the segment map is optional
        return None


def _fragmentation(run: RunView, wf: Waterfall | None) -> Fragmentation | None:
    """What the caching allocator held beyond the live tensors at the failure."""
    if wf is None or wf.reserved is None or wf.allocated is None:
        return None
    segments = _segments(run)
    return Fragmentation(
        reserved=int(wf.reserved),
        allocated=int(wf.allocated),
        inactive_split=wf.inactive_split,
        largest_free_block=max(s.largest_free_block for s in segments) if segments else None,
        segments=len(segments) if segments else None,
    )


def _processes(run: RunView) -> tuple[ProcessRow, ...] | None:
    """Other processes on the run's GPU; ``None`` where that cannot be known (no NVML)."""
    found = other_processes(run)
    if found is None:
        return None
    return tuple(ProcessRow(pid=p.pid, gpu_memory=p.gpu_memory, name=p.name) for p in found)


def _tensors(run: RunView) -> tuple[TensorRow, ...]:
    """The largest storages alive at the failure (else now), largest first."""
    failure = run.failure
    live = list(failure.live) if failure is not None else []
    if not live:
        try:
            live = run.live_storages()
        except Exception:  # noqa: BLE001 - the table is optional
            live = []
    return tuple(
        TensorRow(
            nbytes=int(storage.nbytes),
            category=str(storage.category),
            module=storage.module,
            step=storage.step,
            site=storage.site,
            shape=None if storage.shape is None else tuple(int(d) for d in storage.shape),
            dtype=storage.dtype,
        )
        for storage in live[:MAX_TENSORS]
    )


def _gap_explainer(info: SessionInfo) -> Explainer:
    """``explain(category, measured, predicted)`` in the run's context."""
    context = {
        "rounding": info.rounding,
        "autocast_dtype": info.autocast_dtype,
        "attention_impl": info.attention_impl,
        "optimizer_class": info.optimizer_class,
        "training": info.training,
        "device": info.device,
    }

    def explain(category: str, measured: int, predicted: int | None) -> str | None:
        if predicted is None:
            return None
        try:
            return str(explain_gap(category, measured, predicted, context))
        except Exception:  # noqa: BLE001 - words are optional
            return None

    return explain


def _breakdown(run: RunView, current: tuple[int, ...]) -> tuple[CategoryRow, ...]:
    """Per category: at the failure, its own peak, its share of the peak, the forecast."""
    peaks = run.peaks
    predicted = run.predicted
    explain = _gap_explainer(run.info)
    rows = []
    for i, category in enumerate(CATEGORIES):
        forecast = predicted.get(category)
        forecast = None if forecast is None else int(forecast)
        rows.append(
            CategoryRow(
                category=str(category),
                current=int(current[i]),
                peak=int(peaks.by_category[i]),
                at_peak=int(peaks.at_peak[i]),
                predicted=forecast,
                gap=explain(str(category), int(peaks.by_category[i]), forecast),
            )
        )
    return tuple(rows)


def _timeline(samples: Sequence[Sample]) -> tuple[TimelinePoint, ...]:
    return tuple(
        TimelinePoint(
            time=float(s.time),
            step=int(s.step),
            phase=str(s.phase),
            bytes=tuple(int(v) for v in s.bytes),
            total=int(s.total),
        )
        for s in _thin(samples, MAX_TIMELINE_POINTS)
    )


def _run_info(info: SessionInfo) -> RunInfo:
    return RunInfo(
        model_class=info.model_class,
        param_count=info.param_count,
        trainable_param_count=info.trainable_param_count,
        optimizer_class=info.optimizer_class,
        batch=info.observed_batch,
        seq=info.observed_seq,
        autocast_dtype=info.autocast_dtype,
        checkpointing=info.checkpointing,
        mode=info.mode,
    )


def _message(exc: BaseException | None) -> str:
    """The error's first line (empty without one)."""
    text = "" if exc is None else str(exc).strip()
    return text.splitlines()[0] if text else ""


def build_report(
    run: RunView, exc: BaseException | None = None, replay: Replay | None = None
) -> OomReport:
    """The post-mortem of ``run``'s out-of-memory failure ``exc`` (not written anywhere yet).

    ``replay`` (from the facade) replays the failing step with each suggested change applied, so
    that the suggestions carry measured peaks (see :mod:`profiler.advice.verify`).
    """
    info = run.info
    failure = run.failure
    samples = run.samples
    at_failure = failure.sample if failure is not None else (samples[-1] if samples else None)
    current = tuple(at_failure.bytes) if at_failure is not None else tuple(run.peaks.current)
    capacity = (failure.capacity if failure is not None else None) or info.capacity
    total = failure.total if failure is not None else sum(current)
    free = failure.free if failure is not None else None
    if free is None and capacity is not None:
        free = max(capacity - total, 0)
    simulated = (
        failure.simulated
        if failure is not None
        else type(exc).__name__ == "SimulatedOutOfMemoryError"
    )
    notes: list[str] = []
    try:
        suggestions = tuple(rank(facts_from_run(run), capacity, replay))
    except Exception as error:  # noqa: BLE001 - a report without advice beats no report
        suggestions = ()
        notes.append(f"suggestions unavailable: {type(error).__name__}: {error}")
    if info.device_type != "cuda" and not simulated:
        notes.append("no GPU: the waterfall shows tracked tensors only")
    wf = _device_waterfall(run)
    return OomReport(
        created=failure.time if failure is not None else time.time(),
        simulated=simulated,
        message=_message(exc),
        device=info.device,
        gpu_name=info.gpu_name,
        capacity=None if capacity is None else int(capacity),
        requested=failure.requested if failure is not None else None,
        free=None if free is None else int(free),
        total=total,
        phase=str(failure.phase) if failure is not None else None,
        step=failure.step if failure is not None else None,
        module=failure.module if failure is not None else None,
        peak=int(run.peaks.total) or None,
        run=_run_info(info),
        categories=tuple(str(c) for c in CATEGORIES),
        breakdown=_breakdown(run, current),
        waterfall=_waterfall_rows(info, wf, current, capacity, free),
        tensors=_tensors(run),
        fragmentation=_fragmentation(run, wf),
        processes=_processes(run),
        timeline=_timeline(samples),
        suggestions=suggestions,
        notes=tuple(notes),
    )
