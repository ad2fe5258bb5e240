"""The OOM report as Markdown: what a user reads in a terminal, an issue or a pull request."""

from __future__ import annotations

from profiler.report import tables
from profiler.report.model import OomReport
from profiler.units import format_bytes

__all__ = ["render_markdown"]


def _cell(value: object) -> str:
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _section(title: str, table: tables.Table | str) -> list[str]:
    body = [table] if isinstance(table, str) else _table(*table)
    return ["", f"## {title}", "", *body]


def _suggestions(report: OomReport) -> list[str]:
    out = ["", "## Suggestions (most bytes saved first)", ""]
    if not report.suggestions:
        return [*out, "No suggestion applies."]
    out += _table(*tables.suggestion_table(report))
    details = [f"{i}. {s.detail}" for i, s in enumerate(report.suggestions, 1) if s.detail]
    return out + ([""] + details if details else [])


def _waterfall(report: OomReport) -> list[str]:
    out = ["", "## Waterfall at the failure", "", "```"]
    width = max((2 * r.level + len(r.label) for r in report.waterfall), default=10) + 2
    for r in report.waterfall:
        label = "  " * r.level + r.label
        out.append(f"{label:<{width}}{format_bytes(r.bytes):>12}")
    return [*out, "```"]


def _timeline(report: OomReport) -> list[str]:
    out = ["", "## Timeline leading up to the failure", ""]
    if not report.timeline:
        return [*out, "No samples."]
    start = report.timeline[0].time
    tail = report.timeline[-12:]
    out += _table(
        ["t (s)", "step", "phase", "total"],
        [[f"{p.time - start:.3f}", p.step, p.phase, format_bytes(p.total)] for p in tail],
    )
    if len(report.timeline) > len(tail):
        out.append(f"(last {len(tail)} of {len(report.timeline)} samples)")
    return out


def render_markdown(report: OomReport) -> str:
    """The whole report as a Markdown document."""
    out = [f"# gpumem OOM report: {tables.heading(report)}", ""]
    if report.message:
        out += [f"> {report.message}", ""]
    out += _table(*tables.summary_table(report))
    run = tables.run_table(report)
    if run[1]:
        out += _section("Run", run)

    out += _suggestions(report)

    out += _section("Memory by category", tables.breakdown_table(report))
    predicted = report.predicted_total
    if predicted is not None:
        measured = sum(r.at_peak for r in report.breakdown if r.predicted is not None)
        out += [
            "",
            f"Predicted vs measured (categories with a forecast): {format_bytes(predicted)} "
            f"predicted, {format_bytes(measured)} measured at the peak.",
        ]

    out += _waterfall(report)

    out += _section(
        "Largest live tensors", tables.tensor_table(report) if report.tensors else "None recorded."
    )
    out += _section("Fragmentation", tables.fragmentation_table(report))
    out += _section("Other processes on the GPU", tables.process_table(report))

    out += _timeline(report)
    if report.snapshot:
        out += [
            "",
            f"Allocator snapshot: `{report.snapshot}` (open with `gpumem report --memory-viz`).",
        ]
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"
