"""The Textual widgets of ``gpumem top``: each holds the latest snapshot in a reactive.

Every widget here has a ``snapshot`` reactive; the app assigns each new
:class:`~tui.snapshot.Snapshot` to it and the widget redraws in ``watch_snapshot``. Drawing is a
pure function of the snapshot (:mod:`tui.widgets.render`), so no widget ever touches NVML or disk.
"""

from __future__ import annotations

import contextlib
import time

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable, Static

from profiler.sessions import SessionView
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


class StatusBar(Static):
    """The top line: the snapshot's time, counts, the sort order and whether updates are paused."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True)
    paused: reactive[bool] = reactive(False)
    sort: reactive[str] = reactive(PROCESS_SORTS[0])

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
        self.update(text)

    def watch_snapshot(self, _: Snapshot) -> None:
        self._redraw()

    def watch_paused(self, _: bool) -> None:
        self._redraw()

    def watch_sort(self, _: str) -> None:
        self._redraw()


class NoGpuBanner(Static):
    """A clear banner when there is no GPU source (no NVML, no driver); hidden otherwise."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True)

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        error = snapshot.device_error
        self.display = error is not None and snapshot.time != 0.0
        if error is not None:
            self.update(
                Text(f"No GPU: {error}. Sessions still show below; host-side tracking works.")
            )


class DevicesPanel(Static):
    """Per GPU: a memory bar (used of total), utilization, temperature, power."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True)

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.time == 0.0:
            self.update(Text("waiting for the first snapshot…", style="dim"))
            return
        self.display = bool(snapshot.devices) or snapshot.device_error is None  # else: the banner
        self.update(render_devices(snapshot, self.content_size.width or 100))


class ProcessesTable(DataTable[str]):
    """Processes holding GPU memory: pid, user, GPU, memory, command; ``s`` changes the order."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True)
    sort: reactive[str] = reactive(PROCESS_SORTS[0])

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_column("PID", key="pid")
        self.add_column("USER", key="user")
        self.add_column("GPU", key="gpu")
        self.add_column("MEMORY", key="memory")
        self.add_column("COMMAND", key="command")

    def watch_snapshot(self, _: Snapshot) -> None:
        self._fill()

    def watch_sort(self, _: str) -> None:
        self._fill()

    def _fill(self) -> None:
        snapshot = self.snapshot
        selected = self._selected_key()
        self.clear()
        if snapshot.process_error:
            self.border_subtitle = snapshot.process_error
        else:
            self.border_subtitle = None
        rows = sort_processes(snapshot.processes, self.sort)
        for process in rows:
            pid, user, gpu, memory, command = process_row(process)
            self.add_row(
                Text(pid, justify="right"),
                user,
                Text(gpu, justify="right"),
                Text(memory, justify="right"),
                command[:80],
                key=f"{process.pid}:{process.device_index}",
            )
        self._restore(selected)

    def _selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None

    def _restore(self, key: str | None) -> None:
        if key is None:
            return
        with contextlib.suppress(Exception):
            self.move_cursor(row=self.get_row_index(key), animate=False)


class SessionsTable(DataTable[str]):
    """Tracked sessions: live ones, then recently ended ones dimmed; enter opens one."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True)

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for name in ("NAME", "PID", "RANK", "DEVICE", "STEP", "CURRENT", "PEAK", "STATUS"):
            self.add_column(name, key=name.lower())

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        selected = None
        if self.row_count:
            try:
                selected = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
            except Exception:
                selected = None
        self.clear()
        if snapshot.session_error:
            self.border_subtitle = snapshot.session_error
        else:
            self.border_subtitle = None
        for session in snapshot.sessions:
            style = "" if session.live else "dim"
            cells = session_row(session)
            self.add_row(
                *(
                    Text(cell, style=style, justify="right" if 4 <= i <= 6 else "left")
                    for i, cell in enumerate(cells)
                ),
                key=session.id,
            )
        if selected is not None:
            with contextlib.suppress(Exception):
                self.move_cursor(row=self.get_row_index(selected), animate=False)

    def selected_session(self) -> str | None:
        """The id of the session under the cursor."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None


class _SessionPanel(Static):
    """A panel of the session screen: shows one session (by id) of the latest snapshot."""

    snapshot: reactive[Snapshot] = reactive(EMPTY_SNAPSHOT, always_update=True)

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
            self.update(Text("this session is no longer listed", style="dim"))
            return
        self.update(self.draw(session, snapshot))

    def draw(self, session: SessionView, snapshot: Snapshot) -> Text | object:
        raise NotImplementedError


class SessionHeaderPanel(_SessionPanel):
    """Who the session is: name, pid, device, model, status."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> Text | object:
        return session_header(session, snapshot)


class CategoryBarsPanel(_SessionPanel):
    """A stacked bar by category, measured beside predicted, with a legend."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> Text | object:
        return render_category_bars(session, self.content_size.width or 80)


class HistoryPanel(_SessionPanel):
    """Sparklines of the total and of each category over the recent samples."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> Text | object:
        return render_history(session, self.content_size.width or 80)


class ModulesPanel(_SessionPanel):
    """The top modules by activation bytes."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> Text | object:
        return render_modules(session)


class AlertsPanel(_SessionPanel):
    """Leaks, OOM risk (time to capacity at the current growth), OOMs, suggested fixes."""

    def draw(self, session: SessionView, snapshot: Snapshot) -> Text | object:
        return render_alerts(session, snapshot.devices)
