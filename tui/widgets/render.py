"""Rich renderables for every panel of ``gpumem top``, shared by the widgets and ``--once``.

Pure functions of a :class:`~tui.snapshot.Snapshot`: no Textual, no I/O, no clock.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from profiler.backends.base import DeviceInfo, ProcessInfo
from profiler.records import CATEGORIES
from profiler.session.jobs import JobView, job_dict
from profiler.session.reader import SessionView
from profiler.units import format_bytes
from tui.snapshot import (
    Snapshot,
    alerts_for,
    category_rows,
    format_duration,
    session_capacity,
    sort_processes,
)

__all__ = [
    "CATEGORY_STYLES",
    "bar",
    "frame_text",
    "process_row",
    "render_alerts",
    "render_category_bars",
    "render_devices",
    "render_history",
    "render_modules",
    "session_row",
    "snapshot_to_dict",
    "sparkline",
    "stacked_bar",
]

#: One colour per category, used by the stacked bars, the legend and the history chart.
CATEGORY_STYLES: dict[str, str] = {
    "weights": "dodger_blue1",
    "buffers": "cyan",
    "gradients": "medium_purple1",
    "optimizer": "magenta",
    "activations": "green3",
    "kv_cache": "gold1",
    "temporaries": "orange3",
    "other": "grey62",
}
_SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_SPARKS = "▁▂▃▄▅▆▇█"


def bar(fraction: float | None, width: int) -> Text:
    """A ``[████░░░░]`` bar ``width`` cells wide; red above 90 %, yellow above 75 %."""
    inner = max(1, width - 2)
    if fraction is None:
        return Text("[" + "?" * inner + "]", style="dim")
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * inner))
    style = "red" if fraction > 0.9 else ("yellow" if fraction > 0.75 else "green")
    text = Text("[")
    text.append("█" * filled, style=style)
    text.append("░" * (inner - filled), style="grey35")
    text.append("]")
    return text


def _opt(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def render_devices(snapshot: Snapshot, width: int = 100) -> RenderableType:
    """One line per GPU: index, name, memory bar (used of total), utilization, temperature."""
    if not snapshot.devices:
        if snapshot.device_error:
            return Text(f"No GPU: {snapshot.device_error}", style="bold")
        return Text("GPUs: the driver reports none", style="dim")
    table = Table.grid(padding=(0, 1))
    for _ in range(7):
        table.add_column(no_wrap=True)
    bar_width = max(10, min(40, width - 70))
    for info in snapshot.devices:
        fraction = None
        if info.memory_total and info.memory_used is not None:
            fraction = info.memory_used / info.memory_total
        table.add_row(
            Text(f"GPU{info.index}", style="bold"),
            Text((info.name or "?")[:24]),
            bar(fraction, bar_width),
            Text(f"{format_bytes(info.memory_used)} / {format_bytes(info.memory_total)}"),
            Text(f"util {_opt(info.utilization, '%')}"),
            Text(f"{_opt(info.temperature, '°C')}"),
            Text("" if info.power_watts is None else f"{info.power_watts:.0f} W"),
        )
    return table


def process_row(process: ProcessInfo) -> tuple[str, str, str, str, str]:
    """PID, USER, GPU, MEMORY, COMMAND cells for one process."""
    return (
        str(process.pid),
        process.user or "-",
        str(process.device_index),
        format_bytes(process.gpu_memory),
        (process.command or process.name or "-").replace("\n", " "),
    )


def session_row(session: SessionView) -> tuple[str, ...]:
    """NAME, PID, RANK, DEVICE, STEP, CURRENT, PEAK, STATUS cells for one session."""
    meta = session.meta
    rank = "-" if meta.rank is None else f"{meta.rank}/{_opt(meta.world_size)}"
    status = "live" if session.live else (session.status or "ended")
    return (
        meta.name,
        _opt(meta.pid),
        rank,
        meta.device or "-",
        _opt(session.step),
        format_bytes(session.current),
        format_bytes(session.peak),
        status,
    )


def stacked_bar(label: str, values: Sequence[tuple[str, int]], scale: int, inner: int) -> Text:
    """``label`` and a bar ``inner`` cells wide, one colour per (category, bytes), on ``scale``."""
    text = Text(f"{label:<10}")
    used = 0
    for name, value in values:
        cells = min(int(round(value / scale * inner)), inner - used)
        text.append("█" * cells, style=CATEGORY_STYLES.get(name, "white"))
        used += cells
    text.append("·" * (inner - used), style="grey35")
    return text


def render_category_bars(session: SessionView, width: int = 80) -> RenderableType:
    """Stacked bars by category (now, at the last step's peak, predicted) and a legend table."""
    rows = category_rows(session)
    if not rows:
        return Text("no samples yet", style="dim")
    now_total = sum(r[1] for r in rows)
    has_peak = any(r[2] is not None for r in rows)
    peak_total = sum(r[2] or 0 for r in rows)
    predicted_total = sum(r[3] or 0 for r in rows)
    scale = max(now_total, peak_total, predicted_total, 1)
    inner = max(10, width - 12)

    def stacked(label: str, values: Sequence[tuple[str, int]]) -> Text:
        return stacked_bar(label, values, scale, inner)

    lines: list[RenderableType] = [stacked("now", [(r[0], r[1]) for r in rows])]
    if has_peak:
        lines.append(stacked("at peak", [(r[0], r[2] or 0) for r in rows]))
    if predicted_total:
        lines.append(stacked("predicted", [(r[0], r[3] or 0) for r in rows]))
    legend = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    legend.add_column("category")
    legend.add_column("now", justify="right")
    legend.add_column("at peak", justify="right")
    legend.add_column("predicted", justify="right")
    legend.add_column("peak − predicted", justify="right")
    for name, value, peak, guess in rows:
        diff = "-" if guess is None or peak is None else format_bytes(peak - guess, signed=True)
        legend.add_row(
            Text("■ ", style=CATEGORY_STYLES.get(name, "white")) + Text(name),
            format_bytes(value),
            format_bytes(peak),
            format_bytes(guess),
            diff,
        )
    legend.add_row(
        Text("total", style="bold"),
        format_bytes(now_total),
        format_bytes(peak_total) if has_peak else "-",
        format_bytes(predicted_total) if predicted_total else "-",
        format_bytes(peak_total - predicted_total, signed=True)
        if predicted_total and has_peak
        else "-",
    )
    return Group(*lines, Text(""), legend)


def buckets(values: Sequence[int], width: int) -> list[int]:
    """``values`` squeezed into at most ``width`` columns, each the maximum of its share.

    The maximum keeps every peak visible however long the history.
    """
    count = len(values)
    if count <= width:
        return list(values)
    return [max(values[i * count // width : (i + 1) * count // width]) for i in range(width)]


def sparkline(values: Sequence[int], width: int) -> str:
    """``values`` as at most ``width`` block characters, scaled from their minimum to maximum.

    Longer series are squeezed (:func:`buckets`); a flat series draws at mid height, so that a
    change, however small, shows as a step.
    """
    values = buckets(values, width)
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return _SPARKS[3] * len(values)
    steps = len(_SPARKS) - 1
    return "".join(_SPARKS[int(round((v - low) / (high - low) * steps))] for v in values)


def render_history(session: SessionView, width: int = 80) -> RenderableType:
    """Sparklines of the total and of each category over the kept history, newest at the right.

    Each line is scaled to its own range, printed at its right (``min … max``).
    """
    history = session.history
    if not history:
        return Text("no history yet", style="dim")
    label = 12
    range_width = 23
    chart = max(8, width - label - range_width - 1)
    text = Text()
    series: list[tuple[str, list[int], str]] = [("total", [p.total for p in history], "bold white")]
    for i, category in enumerate(CATEGORIES):
        values = [p.bytes[i] for p in history]
        if any(values):
            series.append((str(category), values, CATEGORY_STYLES.get(str(category), "white")))
    for n, (name, values, style) in enumerate(series):
        if n:
            text.append("\n")
        shown = buckets(values, chart)
        text.append(f"{name:<{label}}")
        text.append(sparkline(shown, chart).ljust(chart), style=style)
        low, high = min(shown), max(shown)
        span = format_bytes(high) if low == high else f"{format_bytes(low)} … {format_bytes(high)}"
        text.append(f" {span:>{range_width}}", style="dim")
    return text


def render_modules(session: SessionView, limit: int = 8) -> RenderableType:
    """The modules holding the most activation bytes."""
    if not session.modules:
        return Text("no module figures yet", style="dim")
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    table.add_column("module")
    table.add_column("activations", justify="right")
    for name, value in session.modules[:limit]:
        table.add_row(Text(name), format_bytes(value))  # a module name is text, not markup
    return table


def render_alerts(session: SessionView, devices: Sequence[DeviceInfo]) -> RenderableType:
    """The session's alerts, most severe first, each with its fix on the next line."""
    alerts = alerts_for(session, devices)
    if not alerts:
        return Text("no alerts", style="dim")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=8, no_wrap=True)
    grid.add_column(ratio=1)
    for alert in alerts[:12]:
        grid.add_row(
            Text(alert.severity.upper(), style=_SEVERITY_STYLES.get(alert.severity, "")),
            Text(alert.title),
        )
        if alert.fix:
            grid.add_row(Text(""), Text(f"fix: {alert.fix}", style="dim"))
    return grid


def _session_header(session: SessionView, snapshot: Snapshot) -> Text:
    meta = session.meta
    parts = [
        f"{meta.name}",
        f"pid {_opt(meta.pid)}",
        f"device {meta.device or '-'}",
    ]
    if meta.rank is not None:
        parts.append(f"rank {meta.rank}/{_opt(meta.world_size)}")
    if meta.model_class:
        params = "" if meta.param_count is None else f" ({meta.param_count:,} params)"
        parts.append(f"{meta.model_class}{params}")
    if meta.mode:
        parts.append(f"mode {meta.mode}")
    capacity = session_capacity(session, snapshot.devices)
    if capacity:
        parts.append(f"capacity {format_bytes(capacity)}")
    status = "live" if session.live else f"ended ({session.status or '?'})"
    if session.live and session.step is not None:
        status = f"live, step {session.step}"
        if session.phase:
            status += f", {session.phase}"
    parts.append(status)
    return Text("  ·  ".join(parts), style="bold" if session.live else "dim")


def frame_text(
    snapshot: Snapshot, *, width: int = 120, sort: str = "memory", max_processes: int = 30
) -> str:
    """One frame as plain text (``gpumem top --once``): devices, processes, sessions, alerts."""
    console = Console(
        file=io.StringIO(),
        width=width,
        color_system=None,
        force_terminal=False,
        legacy_windows=False,
        emoji=False,
        highlight=False,
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.time))
    console.print(Text(f"gpumem top  {stamp}"))
    console.print("\nDEVICES")
    console.print(render_devices(snapshot, width))
    console.print("\nPROCESSES")
    if snapshot.process_error:
        console.print(Text(f"! {snapshot.process_error}"))
    processes = sort_processes(snapshot.processes, sort)
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    for name in ("PID", "USER", "GPU", "MEMORY", "COMMAND"):
        table.add_column(
            name,
            justify="right" if name in ("PID", "GPU", "MEMORY") else "left",
            no_wrap=True,
            overflow="ellipsis",
        )
    for process in processes[:max_processes]:
        table.add_row(*map(Text, process_row(process)))  # plain text, never markup
    if processes:
        console.print(table)
        if len(processes) > max_processes:
            console.print(f"... and {len(processes) - max_processes} more")
    elif not snapshot.process_error:
        console.print("none")
    jobs = snapshot_jobs(snapshot)
    if jobs:
        console.print("\nJOBS")
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
        for name in ("JOB", "RANKS", "PEAK MIN", "MAX", "MEAN", "IMBALANCE", "NEAREST", "SLOWEST"):
            table.add_column(name, no_wrap=True)
        for job in jobs:
            table.add_row(*job_row(job))
        console.print(table)
    console.print("\nSESSIONS")
    if snapshot.session_error:
        console.print(Text(f"! {snapshot.session_error}"))
    if snapshot.sessions:
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
        for name in ("NAME", "PID", "RANK", "DEVICE", "STEP", "CURRENT", "PEAK", "STATUS"):
            table.add_column(name, no_wrap=True)
        for session in snapshot.sessions:
            table.add_row(*map(Text, session_row(session)))
        console.print(table)
        for session in snapshot.sessions:
            alerts = alerts_for(session, snapshot.devices)
            if alerts:
                console.print(Text(f"\nALERTS {session.meta.name} (pid {_opt(session.meta.pid)})"))
                console.print(render_alerts(session, snapshot.devices))
    elif not snapshot.session_error:
        console.print("none")
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in output.splitlines()) + "\n"


#: Version of the ``gpumem top --once --json`` document.
FRAME_SCHEMA_VERSION = 1


def snapshot_to_dict(snapshot: Snapshot, *, sort: str = "memory") -> dict[str, Any]:
    """One frame as a JSON-able dict (``gpumem top --once --json``); sizes in int bytes."""

    def device(info: DeviceInfo) -> dict[str, Any]:
        return {
            "index": info.index,
            "uuid": info.uuid,
            "name": info.name,
            "memory_total": info.memory_total,
            "memory_used": info.memory_used,
            "memory_free": info.memory_free,
            "utilization": info.utilization,
            "temperature": info.temperature,
            "power_watts": info.power_watts,
        }

    def process(info: ProcessInfo) -> dict[str, Any]:
        return {
            "pid": info.pid,
            "device_index": info.device_index,
            "gpu_memory": info.gpu_memory,
            "name": info.name,
            "user": info.user,
            "command": info.command,
        }

    def session(view: SessionView) -> dict[str, Any]:
        meta = view.meta
        return {
            "id": meta.id,
            "name": meta.name,
            "pid": meta.pid,
            "host": meta.host,
            "rank": meta.rank,
            "local_rank": meta.local_rank,
            "world_size": meta.world_size,
            "job_id": meta.job_id,
            "device": meta.device,
            "model_class": meta.model_class,
            "param_count": meta.param_count,
            "start_time": meta.start_time,
            "live": view.live,
            "status": view.status,
            "end_time": view.end_time,
            "step": view.step,
            "phase": view.phase,
            "current": view.current,
            "peak": view.peak,
            "bytes": None
            if view.bytes is None
            else dict(zip((str(c) for c in CATEGORIES), view.bytes, strict=True)),
            "predicted": dict(view.predicted),
            "prediction_basis": None if view.prediction is None else view.prediction.basis,
            "capacity": session_capacity(view, snapshot.devices),
            "alerts": [
                {"severity": a.severity, "kind": a.kind, "title": a.title, "fix": a.fix}
                for a in alerts_for(view, snapshot.devices)
            ],
            "top_modules": [[name, value] for name, value in view.modules],
        }

    return {
        "v": FRAME_SCHEMA_VERSION,
        "time": snapshot.time,
        "errors": {
            "devices": snapshot.device_error,
            "processes": snapshot.process_error,
            "sessions": snapshot.session_error,
        },
        "devices": [device(d) for d in snapshot.devices],
        "processes": [process(p) for p in sort_processes(snapshot.processes, sort)],
        "sessions": [session(s) for s in snapshot.sessions],
        # the sessions of each distributed job, grouped (profiler.session.jobs)
        "jobs": [job_dict(j) for j in snapshot_jobs(snapshot)],
    }


def snapshot_jobs(snapshot: Snapshot) -> list[JobView]:
    """The distributed jobs among the snapshot's sessions (sessions sharing a job id)."""
    return snapshot.jobs()


def job_row(job: JobView) -> tuple[str, ...]:
    """A job's row: ranks seen of the world size, the peaks across ranks, the outliers."""

    def size(value: float | None) -> str:
        return "-" if value is None else format_bytes(int(value))

    return (
        job.job_id,
        f"{job.ranks_seen}/{_opt(job.world_size)}",
        size(job.min_peak),
        size(job.max_peak),
        size(job.mean_peak),
        "-" if job.imbalance is None else f"{job.imbalance:.0%}",
        "-"
        if job.nearest_rank is None or job.nearest_share is None
        else f"rank {job.nearest_rank} {job.nearest_share:.0%}",
        "-"
        if job.slowest_step is None
        else f"rank {_opt(job.slowest_rank)} step {job.slowest_step}",
    )


def session_header(session: SessionView, snapshot: Snapshot) -> Text:
    """The one-line description of a session shown above its detail panels."""
    return _session_header(session, snapshot)


def uptime(session: SessionView, now: float) -> str:
    """How long the session has run (or ran)."""
    start = session.meta.start_time
    if start is None:
        return "-"
    end = now if session.live or session.end_time is None else session.end_time
    return format_duration(max(0.0, end - start))
