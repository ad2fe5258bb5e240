"""The Textual widgets of ``gpumem top``: each holds the latest snapshot in a reactive.

Every widget here has a ``snapshot`` reactive; the app assigns each new
:class:`~tui.snapshot.Snapshot` to it and the widget redraws in ``watch_snapshot``. Drawing is a
pure function of the snapshot (:mod:`tui.widgets.render`), so no widget ever touches NVML or disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import RenderableType
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from profiler.session.reader import SessionView
from tui.snapshot import EMPTY_SNAPSHOT, PROCESS_SORTS, Snapshot, sort_processes
from tui.widgets.render import (
    process_row,
    render_alerts,
    render_category_bars,
    render_devices,
    render_history,
    render_modules,
    session_header,
    session_row,
)
from tui.widgets.table import Row, RowTable

__all__ = [
    "AlertsPanel",
    "CategoryBarsPanel",
    "DevicesPanel",
    "HistoryPanel",
    "ModulesPanel",
    "NoGpuBanner",
    "ProcessesTable",
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
        rows: list[Row] = []
        for process in sort_processes(snapshot.processes, self.sort):
            pid, user, gpu, memory, command = process_row(process)
            identity = f"{process.pid}:{process.device_index}"
            rows.append((identity, (pid, user, gpu, memory, command[:80]), ""))
        self.sync_rows(rows)


class SessionsTable(RowTable):
    """Tracked sessions: live ones, then recently ended ones dimmed; enter opens one."""

    COLUMNS = tuple(
        (name, "right" if name in ("STEP", "CURRENT", "PEAK") else "left")
        for name in ("NAME", "PID", "RANK", "DEVICE", "STEP", "CURRENT", "PEAK", "STATUS")
    )
    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True, repaint=False)

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        subtitle = None if snapshot.session_error is None else Text(snapshot.session_error)
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle  # plain text, never markup
        self.sync_rows([(s.id, session_row(s), "" if s.live else "dim") for s in snapshot.sessions])

    def selected_session(self) -> str | None:
        """The id of the session under the cursor."""
        return self.selected_identity()


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
