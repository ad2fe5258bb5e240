"""The report as text in each format it is written in: Markdown, HTML and JSON."""

from __future__ import annotations

from profiler.errors import UnknownNameError
from profiler.report.model import OomReport, report_to_json
from profiler.report.render_html import render_html
from profiler.report.render_md import render_markdown

__all__ = ["FORMATS", "render"]

#: The formats :func:`render` writes.
FORMATS = ("md", "html", "json")


def render(report: OomReport, fmt: str) -> str:
    """``report`` as text in ``fmt`` (``md``, ``html`` or ``json``).

    Raises:
        UnknownNameError: an unknown format.
    """
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    if fmt == "json":
        return report_to_json(report) + "\n"
    raise UnknownNameError("report format", fmt, list(FORMATS))
