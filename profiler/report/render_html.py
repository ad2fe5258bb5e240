"""The OOM report as one self-contained HTML page: tables, plus charts drawn by inline script.

No network: the data is embedded as JSON, the styles and the script are inline, and the script
draws SVG (the breakdown at the failure, the timeline up to it, the waterfall, predicted vs
measured, and the suggestions against the capacity). Byte labels and axis ticks are formatted
here in Python (:mod:`profiler.units`), so the page never formats a unit itself. When every chart
is drawn the script sets ``data-charts-rendered`` on ``<body>`` to the number drawn.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from profiler.report import tables
from profiler.report.model import OomReport
from profiler.units import format_bytes

__all__ = ["CHART_IDS", "render_html"]

#: The ``id`` of every chart's ``<svg>``, in page order.
CHART_IDS = (
    "chart-breakdown",
    "chart-timeline",
    "chart-waterfall",
    "chart-predicted",
    "chart-suggestions",
)

COLORS = {
    "weights": "#4c78a8",
    "buffers": "#9ecae9",
    "gradients": "#f58518",
    "optimizer": "#e45756",
    "activations": "#54a24b",
    "kv_cache": "#b279a2",
    "temporaries": "#eeca3b",
    "other": "#bab0ac",
    "free": "#e8e8e8",
}


def _ticks(maximum: int, count: int = 5) -> list[list[Any]]:
    """About ``count`` round axis ticks from 0 to at least ``maximum``, with their labels."""
    if maximum <= 0:
        return [[0, format_bytes(0)]]
    raw = maximum / count
    power = 1024 ** max(int(math.log(raw, 1024)), 0) if raw >= 1 else 1
    step = power
    for factor in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        step = power * factor
        if step >= raw:
            break
    top = step * math.ceil(maximum / step)
    return [[v, format_bytes(v)] for v in range(0, top + 1, step)]


def _categories(report: OomReport) -> list[str]:
    return list(report.categories) or [r.category for r in report.breakdown]


def _breakdown_chart(report: OomReport) -> dict[str, Any]:
    """The bytes at the failure by category, the request on top, against the capacity."""
    categories = _categories(report)
    rows = {r.category: r for r in report.breakdown}
    current = [rows[c].current if c in rows else 0 for c in categories]
    capacity = report.capacity
    tracked = sum(current)
    scale_max = max(capacity or 0, tracked + (report.requested or 0), report.peak or 0, 1)
    return {
        "segments": [
            {"name": c, "value": v, "label": f"{c}: {format_bytes(v)}", "color": COLORS.get(c)}
            for c, v in zip(categories, current, strict=True)
            if v > 0
        ],
        "requested": report.requested,
        "requestedLabel": f"requested: {format_bytes(report.requested)}",
        "capacity": capacity,
        "capacityLabel": f"capacity {format_bytes(capacity)}",
        "ticks": _ticks(scale_max),
    }


def _timeline_chart(report: OomReport) -> dict[str, Any]:
    """The samples up to the failure, stacked by category, seconds from the first."""
    categories = _categories(report)
    capacity = report.capacity
    timeline_max = max([p.total for p in report.timeline] + [capacity or 0, 1])
    start = report.timeline[0].time if report.timeline else 0.0
    return {
        "categories": categories,
        "colors": [COLORS.get(c, "#888") for c in categories],
        "points": [[round(p.time - start, 6), list(p.bytes)] for p in report.timeline],
        "capacity": capacity,
        "capacityLabel": f"capacity {format_bytes(capacity)}",
        "ticks": _ticks(timeline_max),
        "end": round(report.timeline[-1].time - start, 6) if report.timeline else 0,
        "endLabel": "failure",
    }


def _waterfall_chart(report: OomReport) -> dict[str, Any]:
    """The waterfall's rows as bars, indented by level."""
    waterfall_max = max([r.bytes or 0 for r in report.waterfall] + [1])
    return {
        "rows": [
            {
                "label": r.label,
                "level": r.level,
                "value": r.bytes or 0,
                "text": format_bytes(r.bytes),
                "color": COLORS.get(r.label, "#4c78a8" if r.level < 2 else "#72b7b2"),
            }
            for r in report.waterfall
        ],
        "ticks": _ticks(waterfall_max, 3),
    }


def _predicted_chart(report: OomReport) -> dict[str, Any]:
    """Measured (share of the peak) beside predicted, per category that has either."""
    predicted_rows = [r for r in report.breakdown if r.predicted is not None or r.at_peak]
    predicted_max = max([max(r.at_peak, r.predicted or 0) for r in predicted_rows] + [1])
    return {
        "rows": [
            {
                "name": r.category,
                "measured": r.at_peak,
                "predicted": r.predicted,
                "measuredLabel": f"measured {format_bytes(r.at_peak)}",
                "predictedLabel": (
                    "no forecast"
                    if r.predicted is None
                    else f"predicted {format_bytes(r.predicted)}"
                ),
            }
            for r in predicted_rows
        ],
        "ticks": _ticks(predicted_max, 3),
    }


def _suggestions_chart(report: OomReport) -> dict[str, Any]:
    """Each suggestion's peak after it, against the capacity."""
    capacity = report.capacity
    peaks = [s.peak_after or 0 for s in report.suggestions]
    suggestions_max = max(peaks + [capacity or 0, 1])
    return {
        "rows": [
            {
                "title": s.title,
                "value": s.peak_after or 0,
                "fits": s.fits,
                "label": f"peak after {format_bytes(s.peak_after)}, saves {format_bytes(s.saves_bytes)}",
            }
            for s in report.suggestions
        ],
        "capacity": capacity,
        "capacityLabel": f"capacity {format_bytes(capacity)}",
        "ticks": _ticks(suggestions_max),
    }


def _chart_data(report: OomReport) -> dict[str, Any]:
    """Every chart's data, by the name the page's script draws it under."""
    return {
        "breakdown": _breakdown_chart(report),
        "timeline": _timeline_chart(report),
        "waterfall": _waterfall_chart(report),
        "predicted": _predicted_chart(report),
        "suggestions": _suggestions_chart(report),
    }


def _esc(value: object) -> str:
    return html.escape("-" if value is None else str(value))


def _table(header: list[str], rows: list[list[object]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _table_or_text(table: tables.Table | str) -> str:
    return f"<p>{_esc(table)}</p>" if isinstance(table, str) else _table(*table)


def render_html(report: OomReport) -> str:
    """The whole report as one HTML page that needs no network."""
    data = json.dumps(_chart_data(report), allow_nan=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    kind = tables.heading(report)
    header, rows = tables.summary_table(report)
    summary = _table(header, rows + tables.run_table(report)[1])
    suggestions = _table(*tables.suggestion_table(report), "suggestions")
    details = "".join(
        f"<li><b>{_esc(s.title)}</b>: {_esc(s.detail)}</li>" for s in report.suggestions if s.detail
    )
    breakdown = _table(*tables.breakdown_table(report))
    waterfall = _table(
        ["part", "bytes"],
        [["\u2003" * r.level + r.label, format_bytes(r.bytes)] for r in report.waterfall],
    )
    tensors = _table(*tables.tensor_table(report))
    fragmentation = _table_or_text(tables.fragmentation_table(report))
    processes = _table_or_text(tables.process_table(report))
    notes = "".join(f"<li>{_esc(n)}</li>" for n in report.notes)
    message = f"<blockquote>{_esc(report.message)}</blockquote>" if report.message else ""
    return _PAGE.format(
        title=_esc(f"gpumem OOM report: {kind}"),
        heading=_esc(kind),
        message=message,
        summary=summary,
        suggestions=suggestions,
        details=f"<ol>{details}</ol>" if details else "",
        breakdown=breakdown,
        waterfall=waterfall,
        tensors=tensors,
        fragmentation=fragmentation,
        processes=processes,
        notes=f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "",
        data=data,
        script=_SCRIPT,
        style=_STYLE,
    )


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
blockquote{margin:8px 0;padding:8px 12px;background:#fff4f4;border-left:4px solid #e45756;
font-family:ui-monospace,monospace;font-size:13px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#fafafa}
svg{display:block;margin:8px 0;background:#fff;border:1px solid #eee}
svg text{font:11px system-ui,sans-serif;fill:#333}.legend span{display:inline-block;margin-right:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body data-charts-rendered="0">
<h1>gpumem OOM report: {heading}</h1>
{message}
<div class="grid"><div>{summary}</div><div>
<h2>At the failure</h2>
<svg id="chart-breakdown" width="520" height="160" role="img" aria-label="memory at the failure"></svg>
<div class="legend" id="legend"></div></div></div>
<h2>Suggestions (most bytes saved first)</h2>
{suggestions}
<svg id="chart-suggestions" width="1060" height="60" role="img" aria-label="peak after each suggestion"></svg>
{details}
<h2>Timeline leading up to the failure</h2>
<svg id="chart-timeline" width="1060" height="280" role="img" aria-label="memory timeline"></svg>
<h2>Memory by category</h2>
<div class="grid"><div>{breakdown}</div><div>
<svg id="chart-predicted" width="520" height="60" role="img" aria-label="predicted vs measured"></svg>
</div></div>
<h2>Waterfall at the failure</h2>
<div class="grid"><div>{waterfall}</div><div>
<svg id="chart-waterfall" width="520" height="60" role="img" aria-label="device waterfall"></svg>
</div></div>
<h2>Largest live tensors</h2>
{tensors}
<h2>Fragmentation</h2>
{fragmentation}
<h2>Other processes on the GPU</h2>
{processes}
{notes}
<script type="application/json" id="gpumem-data">{data}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("gpumem-data").textContent);
  function el(parent, name, attrs, text) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) {
      var t = document.createElementNS(NS, "title"); t.textContent = text; node.appendChild(t);
    }
    parent.appendChild(node); return node;
  }
  function label(parent, x, y, text, anchor) {
    var node = el(parent, "text", {x: x, y: y, "text-anchor": anchor || "start"});
    node.textContent = text; return node;
  }
  function top(ticks) { return ticks.length ? Math.max(ticks[ticks.length - 1][0], 1) : 1; }
  function axis(svg, ticks, x0, width, y0, y1) {
    var max = top(ticks);
    ticks.forEach(function (t) {
      var x = x0 + width * t[0] / max;
      el(svg, "line", {x1: x, x2: x, y1: y0, y2: y1, stroke: "#ddd", "class": "tick"});
      label(svg, x, y1 + 12, t[1], "middle");
    });
    return max;
  }
  function done(svg) { svg.setAttribute("data-rendered", "true"); }

  function breakdown(d) {
    var svg = document.getElementById("chart-breakdown");
    var x0 = 20, w = 480, y = 30, h = 40;
    var max = axis(svg, d.ticks, x0, w, 20, 125);
    var x = x0;
    var legend = document.getElementById("legend");
    d.segments.forEach(function (s) {
      var width = w * s.value / max;
      el(svg, "rect", {x: x, y: y, width: Math.max(width, 0.5), height: h, fill: s.color,
                       "class": "segment", "data-category": s.name}, s.label);
      x += width;
      var item = document.createElement("span");
      item.innerHTML = "<i></i>"; item.firstChild.style.background = s.color;
      item.appendChild(document.createTextNode(s.label)); legend.appendChild(item);
    });
    if (d.requested) {
      var rw = w * d.requested / max;
      el(svg, "rect", {x: x, y: y + 45, width: Math.max(rw, 0.5), height: 14, fill: "none",
                       stroke: "#e45756", "stroke-dasharray": "4 2", "class": "requested"},
         d.requestedLabel);
      label(svg, Math.min(x + rw, x0 + w), y + 72, d.requestedLabel, "end");
    }
    if (d.capacity) {
      var cx = x0 + w * d.capacity / max;
      el(svg, "line", {x1: cx, x2: cx, y1: 14, y2: 125, stroke: "#e45756", "stroke-width": 2,
                       "class": "capacity"}, d.capacityLabel);
      label(svg, cx, 12, d.capacityLabel, "end");
    }
    done(svg);
  }

  function timeline(d) {
    var svg = document.getElementById("chart-timeline");
    var x0 = 70, w = 960, y0 = 20, h = 220;
    var pts = d.points;
    var ymax = top(d.ticks);
    d.ticks.forEach(function (t) {
      var y = y0 + h - h * t[0] / ymax;
      el(svg, "line", {x1: x0, x2: x0 + w, y1: y, y2: y, stroke: "#eee", "class": "tick"});
      label(svg, x0 - 6, y + 4, t[1], "end");
    });
    var n = pts.length;
    var tmax = n ? Math.max(pts[n - 1][0], 1e-9) : 1;
    function X(i) { return n > 1 ? x0 + w * pts[i][0] / tmax : x0 + w / 2; }
    function Y(v) { return y0 + h - h * v / ymax; }
    var below = pts.map(function () { return 0; });
    d.categories.forEach(function (c, ci) {
      var upper = pts.map(function (p, i) { return below[i] + p[1][ci]; });
      if (!pts.some(function (p) { return p[1][ci] > 0; })) { below = upper; return; }
      var path = "";
      for (var i = 0; i < n; i++) { path += (i ? "L" : "M") + X(i).toFixed(2) + "," + Y(upper[i]).toFixed(2); }
      for (var j = n - 1; j >= 0; j--) { path += "L" + X(j).toFixed(2) + "," + Y(below[j]).toFixed(2); }
      el(svg, "path", {d: path + "Z", fill: d.colors[ci], "fill-opacity": 0.85, "class": "area",
                       "data-category": c}, c);
      below = upper;
    });
    if (d.capacity) {
      var cy = Y(d.capacity);
      el(svg, "line", {x1: x0, x2: x0 + w, y1: cy, y2: cy, stroke: "#e45756", "stroke-width": 2,
                       "class": "capacity"}, d.capacityLabel);
      label(svg, x0 + w, cy - 4, d.capacityLabel, "end");
    }
    if (n) {
      var fx = X(n - 1);
      el(svg, "line", {x1: fx, x2: fx, y1: y0, y2: y0 + h, stroke: "#222", "stroke-dasharray": "3 3",
                       "class": "failure"}, d.endLabel);
      label(svg, fx - 4, y0 + h - 6, d.endLabel, "end");
    }
    label(svg, x0 + w / 2, y0 + h + 32, "time since the first sample (s): 0 \u2192 " + tmax.toFixed(3), "middle");
    done(svg);
  }

  function bars(id, rows, ticks, valueOf, colorOf, textOf, tipOf, extra) {
    var svg = document.getElementById(id);
    var x0 = 220, w = (parseInt(svg.getAttribute("width"), 10) || 520) - x0 - 30, row = 20;
    var height = 30 + rows.length * row + 20;
    svg.setAttribute("height", height);
    var max = axis(svg, ticks, x0, w, 10, height - 20);
    rows.forEach(function (r, i) {
      var y = 14 + i * row;
      label(svg, x0 - 6, y + 12, textOf(r), "end");
      var values = valueOf(r);
      values.forEach(function (v, k) {
        if (v === null || v === undefined) { return; }
        var bh = (row - 4) / values.length;
        el(svg, "rect", {x: x0, y: y + k * bh, width: Math.max(w * v / max, 0.5), height: bh - 1,
                         fill: colorOf(r, k), "class": "bar"}, tipOf(r, k));
      });
    });
    if (extra) { extra(svg, x0, w, max, height); }
    done(svg);
  }

  function capacityLine(d) {
    return function (svg, x0, w, max, height) {
      if (!d.capacity) { return; }
      var cx = x0 + w * d.capacity / max;
      el(svg, "line", {x1: cx, x2: cx, y1: 4, y2: height - 20, stroke: "#e45756", "stroke-width": 2,
                       "class": "capacity"}, d.capacityLabel);
    };
  }

  var drawn = 0;
  var charts = [
    function () { breakdown(data.breakdown); },
    function () { timeline(data.timeline); },
    function () {
      bars("chart-waterfall", data.waterfall.rows, data.waterfall.ticks,
           function (r) { return [r.value]; }, function (r) { return r.color; },
           function (r) { return "\u00a0\u00a0".repeat(r.level) + r.label; },
           function (r) { return r.label + ": " + r.text; });
    },
    function () {
      bars("chart-predicted", data.predicted.rows, data.predicted.ticks,
           function (r) { return [r.measured, r.predicted]; },
           function (r, k) { return k ? "#bab0ac" : "#4c78a8"; },
           function (r) { return r.name; },
           function (r, k) { return k ? r.predictedLabel : r.measuredLabel; });
    },
    function () {
      var d = data.suggestions;
      bars("chart-suggestions", d.rows, d.ticks, function (r) { return [r.value]; },
           function (r) { return r.fits === false ? "#e45756" : (r.fits ? "#54a24b" : "#bab0ac"); },
           function (r) { return r.title.length > 34 ? r.title.slice(0, 33) + "\u2026" : r.title; },
           function (r) { return r.title + ": " + r.label; }, capacityLine(d));
    }
  ];
  charts.forEach(function (draw) {
    try { draw(); drawn += 1; }
    catch (e) { document.body.setAttribute("data-chart-error", String(e)); }
  });
  document.body.setAttribute("data-charts-rendered", String(drawn));
})();
"""
