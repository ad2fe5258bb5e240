"""The OOM report as Markdown: what a user reads in a terminal, an issue or a pull request."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from profiler.units import format_bytes

if TYPE_CHECKING:
    from profiler.report.model import OomReport

__all__ = ["render_markdown"]


def _cell(value: object) -> str:
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _fits(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def render_markdown(report: OomReport) -> str:
    """The whole report as a Markdown document."""
    when = _dt.datetime.fromtimestamp(report.created, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    kind = "Simulated out of memory" if report.simulated else "CUDA out of memory"
    device = report.device + (f" ({report.gpu_name})" if report.gpu_name else "")
    out = [f"# gpumem OOM report: {kind}", ""]
    if report.message:
        out += [f"> {report.message}", ""]
    out += _table(
        ["what", "value"],
        [
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
        ],
    )
    run = report.run
    facts = [
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
    shown: list[list[object]] = [[k, v] for k, v in facts if v is not None]
    if shown:
        out += ["", "## Run", ""] + _table(["what", "value"], shown)

    out += ["", "## Suggestions (most bytes saved first)", ""]
    if report.suggestions:
        rows: list[list[object]] = []
        for i, s in enumerate(report.suggestions, 1):
            rows.append(
                [
                    i,
                    s.kind,
                    s.title,
                    format_bytes(s.saves_bytes),
                    format_bytes(s.peak_after),
                    _fits(s.fits),
                ]
            )
        out += _table(["#", "kind", "change", "saves", "peak after", "fits"], rows)
        details = [f"{i}. {s.detail}" for i, s in enumerate(report.suggestions, 1) if s.detail]
        if details:
            out += [""] + details
    else:
        out.append("No suggestion applies.")

    out += ["", "## Memory by category", ""]
    out += _table(
        ["category", "at failure", "peak", "share of peak", "predicted", "peak vs predicted"],
        [
            [
                r.category,
                format_bytes(r.current),
                format_bytes(r.peak),
                format_bytes(r.at_peak),
                format_bytes(r.predicted),
                r.gap,
            ]
            for r in report.breakdown
        ],
    )
    predicted = report.predicted_total
    if predicted is not None:
        measured = sum(r.at_peak for r in report.breakdown if r.predicted is not None)
        out += [
            "",
            f"Predicted vs measured (categories with a forecast): {format_bytes(predicted)} "
            f"predicted, {format_bytes(measured)} measured at the peak.",
        ]

    out += ["", "## Waterfall at the failure", "", "```"]
    width = max((2 * r.level + len(r.label) for r in report.waterfall), default=10) + 2
    for r in report.waterfall:
        label = "  " * r.level + r.label
        out.append(f"{label:<{width}}{format_bytes(r.bytes):>12}")
    out.append("```")

    out += ["", "## Largest live tensors", ""]
    if report.tensors:
        out += _table(
            ["bytes", "category", "shape", "dtype", "module", "created at"],
            [
                [
                    format_bytes(t.nbytes),
                    t.category,
                    None if t.shape is None else "×".join(str(d) for d in t.shape) or "scalar",
                    t.dtype,
                    t.module,
                    t.site,
                ]
                for t in report.tensors
            ],
        )
    else:
        out.append("None recorded.")

    out += ["", "## Fragmentation", ""]
    frag = report.fragmentation
    if frag is None:
        out.append("Not measured (no CUDA caching allocator).")
    else:
        out += _table(
            ["what", "bytes"],
            [
                ["reserved", format_bytes(frag.reserved)],
                ["allocated", format_bytes(frag.allocated)],
                ["cached but free", format_bytes(frag.cached_free)],
                ["inactive split blocks", format_bytes(frag.inactive_split)],
                ["largest free block", format_bytes(frag.largest_free_block)],
                ["segments", frag.segments],
            ],
        )

    out += ["", "## Other processes on the GPU", ""]
    if report.processes is None:
        out.append("Unknown (no NVML, or not a GPU).")
    elif not report.processes:
        out.append("None.")
    else:
        out += _table(
            ["pid", "name", "memory"],
            [[p.pid, p.name, format_bytes(p.gpu_memory)] for p in report.processes],
        )

    out += ["", "## Timeline leading up to the failure", ""]
    if report.timeline:
        start = report.timeline[0].time
        tail = report.timeline[-12:]
        out += _table(
            ["t (s)", "step", "phase", "total"],
            [[f"{p.time - start:.3f}", p.step, p.phase, format_bytes(p.total)] for p in tail],
        )
        if len(report.timeline) > len(tail):
            out.append(f"(last {len(tail)} of {len(report.timeline)} samples)")
    else:
        out.append("No samples.")
    if report.snapshot:
        out += [
            "",
            f"Allocator snapshot: `{report.snapshot}` (open with `gpumem report --memory-viz`).",
        ]
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"
