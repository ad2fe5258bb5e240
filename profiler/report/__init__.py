"""The OOM post-mortem report: its data model (:mod:`.model`) and its renderers.

- :mod:`profiler.report.model`: :class:`OomReport` and its parts, with JSON round-trip.
- :mod:`profiler.report.render_md`: Markdown.
- :mod:`profiler.report.render_html`: one self-contained HTML page with inline SVG charts.
"""

from __future__ import annotations

from profiler.report.model import SCHEMA_VERSION, OomReport, report_from_json, report_to_json

__all__ = ["FORMATS", "SCHEMA_VERSION", "OomReport", "render", "report_from_json", "report_to_json"]

#: The formats :func:`render` writes.
FORMATS = ("md", "html", "json")


def render(report: OomReport, fmt: str) -> str:
    """``report`` as text in ``fmt`` (``md``, ``html`` or ``json``).

    Raises:
        UnknownNameError: an unknown format.
    """
    if fmt == "md":
        from profiler.report.render_md import render_markdown

        return render_markdown(report)
    if fmt == "html":
        from profiler.report.render_html import render_html

        return render_html(report)
    if fmt == "json":
        return report_to_json(report) + "\n"
    from profiler.errors import UnknownNameError

    raise UnknownNameError("report format", fmt, list(FORMATS))
