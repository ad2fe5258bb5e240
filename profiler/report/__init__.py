"""The OOM post-mortem: build, store and render, around a plain data model.

- :mod:`profiler.report.model`: :class:`OomReport` and its parts, with JSON round-trip (plain data).
- :mod:`profiler.report.build`: the report from a run at its failure (``build_report``).
- :mod:`profiler.report.store`: write, load and find reports on disk (atomically).
- :mod:`profiler.report.render`: the formats; :mod:`.render_md` (Markdown) and
  :mod:`.render_html` (one self-contained HTML page with inline SVG charts), sharing
  :mod:`.tables`.
- :mod:`profiler.report.reporter`: ``handle_oom``, what the tracker calls at an OOM.

Renderers import the model, never the reverse. This package's own namespace (the model, the
store and the renderers) imports neither torch nor pandas, so reading a saved report stays
light; ``build`` and ``reporter`` read a live run and are imported from their modules.
"""

from __future__ import annotations

from profiler.report.model import SCHEMA_VERSION, OomReport, report_from_json, report_to_json
from profiler.report.render import FORMATS, render
from profiler.report.store import (
    REPORT_STEM,
    find_report,
    load_report,
    report_location,
    reports_dir,
    write_report,
)

__all__ = [
    "FORMATS",
    "REPORT_STEM",
    "SCHEMA_VERSION",
    "OomReport",
    "find_report",
    "load_report",
    "render",
    "report_from_json",
    "report_to_json",
    "report_location",
    "reports_dir",
    "write_report",
]
