"""The Textual widgets of ``gpumem top``: each holds the latest snapshot in a reactive.

Every widget here has a ``snapshot`` reactive; the app assigns each new
:class:`~tui.snapshot.Snapshot` to it and the widget redraws in ``watch_snapshot``. Drawing is a
pure function of the snapshot (:mod:`tui.widgets.render`), so no widget ever touches NVML or disk.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from rich.console import RenderableType
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from profiler.backends.base import ProcessInfo
from profiler.session.reader import SessionView
from tui.snapshot import EMPTY_SNAPSHOT, PROCESS_SORTS, Snapshot, sort_processes
from tui.widgets.compare import compare_title, render_category_compare
from tui.widgets.jobs import (
    RANK_COLUMNS,
    ROW_COLUMNS,
    group_rows,
    highest_rank,
    job_header,
    job_id_of,
    rank_row,
)
from tui.widgets.render import (
    process_row,
    render_alerts,
    render_category_bars,
    render_devices,
    render_history,
    render_modules,
    session_header,
)
from tui.widgets.table import Row, RowTable

__all__ = [
    "AlertsPanel",
    "CategoryBarsPanel",
    "CategoryComparePanel",
    "DevicesPanel",
    "HistoryPanel",
    "JobHeaderPanel",
    "ModulesPanel",
    "NoGpuBanner",
    "ProcessesTable",
    "RanksTable",
    "SessionHeaderPanel",
    "SessionsTable",
    "StatusBar",
]


class _CalmStatic(Static):
    """A Static that redraws only when what it shows changed, and re-lays out only on a resize.

    A layout pass repaints the whole screen (tens of ms with two tables); most refreshes change a
    few figures on lines that keep their count, so they take the cheap path.
    """

    _shown_key: object = None
    _shown_lines: int = -1

    def show(self, key: object, build: Callable[[], RenderableType], lines: int) -> None:
        """Show ``build()`` unless ``key`` is what is shown; ``lines`` is its height."""
        if key == self._shown_key:
            return
        self._shown_key = key
        self.update(build(), layout=lines != self._shown_lines)
        self._shown_lines = lines


class StatusBar(_CalmStatic):
    """The top line: the snapshot's time, counts, the sort order and whether updates are paused."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)
    paused: reactive[bool] = reactive(False, repaint=False)
    sort: reactive[str] = reactive(PROCESS_SORTS[0], repaint=False)

    def _redraw(self) -> None:
        snap = self.snapshot
        text = Text("gpumem top", style="bold")
        if snap.time:
            text.append("  " + time.strftime("%H:%M:%S UTC", time.gmtime(snap.time)))
        live = sum(1 for s in snap.sessions if s.live)
        text.append(
            f"  ·  {len(snap.devices)} GPUs  ·  {len(snap.processes)} processes  ·  "
            f"{live} live sessions  ·  sort: {self.sort}"
        )
        if self.paused:
            text.append("  PAUSED", style="bold black on yellow")
        text.append("  ·  ? help", style="dim")
        self.show(text.plain, lambda: text, 1)

    def watch_snapshot(self, _: Snapshot) -> None:
        self._redraw()

    def watch_paused(self, _: bool) -> None:
        self._redraw()

    def watch_sort(self, _: str) -> None:
        self._redraw()


class NoGpuBanner(_CalmStatic):
    """A clear banner when there is no GPU source (no NVML, no driver); hidden otherwise."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        error = snapshot.device_error
        display = error is not None and snapshot.time != 0.0
        if self.display != display:
            self.display = display
        if error is not None:
            text = f"No GPU: {error}. Sessions still show below; host-side tracking works."
            self.show(text, lambda: Text(text), -2)


class DevicesPanel(_CalmStatic):
    """Per GPU: a memory bar (used of total), utilization, temperature, power."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.time == 0.0:
            self.show(None, lambda: Text("waiting for the first snapshot…", style="dim"), 1)
            return
        display = bool(snapshot.devices) or snapshot.device_error is None  # else: the banner
        if self.display != display:
            self.display = display
        width = self.content_size.width or 100
        self.show(
            (snapshot.devices, snapshot.device_error, width),
            lambda: render_devices(snapshot, width),
            max(1, len(snapshot.devices)),
        )


@functools.lru_cache(maxsize=4096)
def _process_row(process: ProcessInfo) -> Row:
    """A process's row, made once per state of it (most processes do not change per refresh)."""
    pid, user, gpu, memory, command = process_row(process)
    return (f"{process.pid}:{process.device_index}", (pid, user, gpu, memory, command[:80]), "")


class ProcessesTable(RowTable):
    """Processes holding GPU memory: pid, user, GPU, memory, command; ``s`` changes the order."""

    COLUMNS = (
        ("PID", "right"),
        ("USER", "left"),
        ("GPU", "right"),
        ("MEMORY", "right"),
        ("COMMAND", "left"),
    )
    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)
    sort: reactive[str] = reactive(PROCESS_SORTS[0], repaint=False)

    def watch_snapshot(self, _: Snapshot) -> None:
        self._fill()

    def watch_sort(self, _: str) -> None:
        self._fill()

    def _fill(self) -> None:
        snapshot = self.snapshot
        subtitle = None if snapshot.process_error is None else Text(snapshot.process_error)
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle  # plain text, never markup
        rows: list[Row] = [_process_row(p) for p in sort_processes(snapshot.processes, self.sort)]
        self.sync_rows(rows)


class SessionsTable(RowTable):
    """Tracked sessions and jobs (a job's ranks in one row): live ones, then recently ended ones
    dimmed; enter opens a session, or a job's per-rank table."""

    COLUMNS = ROW_COLUMNS
    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        subtitle = None if snapshot.session_error is None else Text(snapshot.session_error)
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle  # plain text, never markup
        self.sync_rows(group_rows(snapshot))

    def selected_session(self) -> str | None:
        """The identity of the row under the cursor: a session id, or a job's row identity."""
        return self.selected_identity()


class RanksTable(RowTable):
    """One job's ranks, by rank; enter opens one."""

    COLUMNS = RANK_COLUMNS
    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)

    def __init__(self, job_id: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="snapshot-view")
        self.job_id = job_id  # the job shown

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        job = snapshot.job(self.job_id)
        sessions = () if job is None else job.sessions
        self.sync_rows(
            [(s.id, rank_row(s, snapshot.devices), "" if s.live else "dim") for s in sessions]
        )


class JobHeaderPanel(_CalmStatic):
    """Who the job is: its ranks, the peaks across them, the outliers."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)

    def __init__(self, job_id: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="snapshot-view")
        self.job_id = job_id

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        self._redraw()

    def _redraw(self) -> None:
        job = self.snapshot.job(self.job_id)
        if job is None:
            self.show(None, lambda: Text("this job is no longer listed", style="dim"), 1)
            return
        text = job_header(job)
        self.show(text, lambda: Text(text, style="bold" if job.live else "dim"), -1)


class CategoryComparePanel(_CalmStatic):
    """The highlighted session's (or job's: its rank with the highest peak) bytes per category,
    measured beside predicted; :attr:`selection` is the row identity it follows."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="snapshot-view")
        self.selection: str | None = None

    def select(self, identity: str | None) -> None:
        """Follow the row ``identity`` (a session id or a job's row identity)."""
        self.selection = identity
        self._redraw()

    def watch_snapshot(self, _: Snapshot) -> None:
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        snapshot = self.snapshot
        job_id = job_id_of(self.selection)
        job = snapshot.job(job_id) if job_id is not None else None
        session = highest_rank(job) if job is not None else snapshot.session(self.selection)
        if session is None:
            self.border_title = "categories: measured vs predicted"
            self.show(None, lambda: Text("no session selected", style="dim"), -1)
            return
        who = session.meta.name
        if session.meta.rank is not None:
            who = f"{who} rank {session.meta.rank}"
        if job is not None:
            who = f"job {job.job_id}, rank {session.meta.rank} (highest peak)"
        title = Text(f"{who}: {compare_title(session)}")
        if self.border_title != title:
            self.border_title = title  # plain text, never markup
        width = self.content_size.width or 100
        last = session.steps[-1] if session.steps else None
        key = (session.id, session.bytes, last, session.predicted, session.prediction, width)
        self.show(key, lambda: render_category_compare(session, width), -1)


class _SessionPanel(_CalmStatic):
    """A panel of the session screen: shows one session (by id) of the latest snapshot."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)

    def __init__(self, session_id: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="snapshot-view")
        self.session_id = session_id

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        snapshot = self.snapshot
        session = snapshot.session(self.session_id)
        if session is None:
            self.show(None, lambda: Text("this session is no longer listed", style="dim"), -1)
            return
        width = self.content_size.width
        self.show(
            (session, width, snapshot.devices),
            lambda: self.draw(session, snapshot),
            -1,  # panels of the session screen may change height: always lay out
        )

    def draw(self, session: SessionView, snapshot: Snapshot) -> RenderableType:
        raise NotImplementedError


class SessionHeaderPanel(_SessionPanel):
    """Who the session is: name, pid, device, model, status."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> RenderableType:
        return session_header(session, snapshot)


class CategoryBarsPanel(_SessionPanel):
    """A stacked bar by category, measured beside predicted, with a legend."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> RenderableType:
        return render_category_bars(session, self.content_size.width or 80)


class HistoryPanel(_SessionPanel):
    """Sparklines of the total and of each category over the recent samples."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> RenderableType:
        return render_history(session, self.content_size.width or 80)


class ModulesPanel(_SessionPanel):
    """The top modules by activation bytes."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> RenderableType:
        return render_modules(session)


class AlertsPanel(_SessionPanel):
    """Leaks, OOM risk (time to capacity at the current growth), OOMs, suggested fixes."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> RenderableType:
        return render_alerts(session, snapshot.devices)
