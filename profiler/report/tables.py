"""The report's sections as plain tables: the Markdown and HTML renderers lay out the same rows.

Each function returns ``(header, rows)`` with cells already formatted (bytes through
:mod:`profiler.units`), or a one-line text where a section has nothing to tabulate.
"""

from __future__ import annotations

import datetime as _dt

from profiler.report.model import OomReport
from profiler.units import format_bytes

Table = tuple[list[str], list[list[object]]]

__all__ = [
    "Table",
    "breakdown_table",
    "fragmentation_table",
    "heading",
    "process_table",
    "run_table",
    "suggestion_table",
    "summary_table",
    "tensor_table",
]


def heading(report: OomReport) -> str:
    """What failed: a simulated device or CUDA."""
    return "Simulated out of memory" if report.simulated else "CUDA out of memory"


def _fits(value: bool | None, verified: bool = False) -> str:
    if value is None:
        return "estimated" if not verified else "unknown"
    text = "yes" if value else "no"
    return f"{text} (replayed)" if verified and value else text


def summary_table(report: OomReport) -> Table:
    """When, where, how much was asked and free, and what was in flight."""
    when = _dt.datetime.fromtimestamp(report.created, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    device = report.device + (f" ({report.gpu_name})" if report.gpu_name else "")
    return ["what", "value"], [
        ["when (UTC)", when],
        ["device", device],
        ["capacity", format_bytes(report.capacity)],
        ["requested", format_bytes(report.requested)],
        ["free", format_bytes(report.free)],
        ["tracked at failure", format_bytes(report.total)],
        ["peak tracked", format_bytes(report.peak)],
        ["phase", report.phase],
        ["step", report.step],
        ["module", report.module],
    ]


def run_table(report: OomReport) -> Table:
    """The facts about the run that the suggestions were sized from (known ones only)."""
    run = report.run
    facts: list[tuple[str, object]] = [
        ("model", run.model_class),
        ("parameters", None if run.param_count is None else f"{run.param_count:,}"),
        (
            "trainable",
            None if run.trainable_param_count is None else f"{run.trainable_param_count:,}",
        ),
        ("optimizer", run.optimizer_class),
        ("batch", run.batch),
        ("sequence", run.seq),
        ("autocast", run.autocast_dtype),
        ("checkpointing", run.checkpointing),
        ("mode", run.mode),
    ]
    return ["what", "value"], [[k, v] for k, v in facts if v is not None]


def suggestion_table(report: OomReport) -> Table:
    """The suggestions, most bytes saved first."""
    return ["#", "kind", "change", "saves", "peak after", "fits"], [
        [
            i,
            s.kind,
            s.title,
            format_bytes(s.saves_bytes),
            format_bytes(s.peak_after),
            _fits(s.fits, s.verified),
        ]
        for i, s in enumerate(report.suggestions, 1)
    ]


def breakdown_table(report: OomReport) -> Table:
    """Bytes per category at the failure and at the peak, beside the prediction."""
    return ["category", "at failure", "peak", "share of peak", "predicted", "peak vs predicted"], [
        [
            r.category,
            format_bytes(r.current),
            format_bytes(r.peak),
            format_bytes(r.at_peak),
            format_bytes(r.predicted),
            r.gap,
        ]
        for r in report.breakdown
    ]


def tensor_table(report: OomReport) -> Table:
    """The largest live tensors with shape, dtype, category and creation site."""
    return ["bytes", "category", "shape", "dtype", "module", "created at"], [
        [
            format_bytes(t.nbytes),
            t.category,
            None if t.shape is None else "×".join(str(d) for d in t.shape) or "scalar",
            t.dtype,
            t.module,
            t.site,
        ]
        for t in report.tensors
    ]


def fragmentation_table(report: OomReport) -> Table | str:
    """The caching allocator's split of reserved memory, or why there is none."""
    frag = report.fragmentation
    if frag is None:
        return "Not measured (no CUDA caching allocator)."
    return ["what", "bytes"], [
        ["reserved", format_bytes(frag.reserved)],
        ["allocated", format_bytes(frag.allocated)],
        ["cached but free", format_bytes(frag.cached_free)],
        ["inactive split blocks", format_bytes(frag.inactive_split)],
        ["largest free block", format_bytes(frag.largest_free_block)],
        ["segments", frag.segments],
    ]


def process_table(report: OomReport) -> Table | str:
    """Other processes holding memory on the GPU, or why they are unknown."""
    if report.processes is None:
        return "Unknown (no NVML, or not a GPU)."
    if not report.processes:
        return "None."
    return ["pid", "name", "memory"], [
        [p.pid, p.name, format_bytes(p.gpu_memory)] for p in report.processes
    ]
