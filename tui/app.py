"""``gpumem top``: the Textual dashboard.

The app never waits on NVML or disk. A timer (``set_interval``) starts a thread worker that asks
the :class:`~tui.snapshot.SnapshotBuilder` for a snapshot and posts :class:`SnapshotFetched`; the
handler stores it in the ``snapshot`` reactive and hands it to every snapshot widget, which
redraws from it. A slow source only delays the next frame (one fetch at a time); a failing one
shows its message in place. Tests inject a scripted builder and a frozen clock.

Keys: ``q`` quit, ``p`` pause, ``s`` sort processes, arrows and ``tab`` move, ``enter`` opens the
session under the cursor (``escape`` goes back), ``?`` help.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from tui.snapshot import EMPTY_SNAPSHOT, PROCESS_SORTS, Snapshot
from tui.widgets.panels import (
    AlertsPanel,
    CategoryBarsPanel,
    DevicesPanel,
    HistoryPanel,
    ModulesPanel,
    NoGpuBanner,
    ProcessesTable,
    SessionHeaderPanel,
    SessionsTable,
    StatusBar,
)
from tui.widgets.table import RowTable

__all__ = ["GpumemTopApp", "HelpScreen", "SessionScreen", "SnapshotFetched"]

HELP_TEXT = """\
gpumem top — live GPU memory

  q          quit
  p          pause / resume updates
  s          sort processes (memory, pid, user, command)
  ↑ ↓        move in a table
  tab        next panel (shift+tab: previous)
  enter      open the session under the cursor
  escape     back from a session or this help
  ?          this help

Sessions: live ones first; ended ones stay dimmed for 10 minutes.
OOM risk: time until the device is full at the growth of the recent step ends.
"""


class Builder(Protocol):
    """What the app needs from a snapshot builder."""

    def build(self) -> Snapshot:
        """One snapshot; never raises."""
        ...


class SnapshotFetched(Message):
    """A worker built a new snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class HelpScreen(ModalScreen[None]):
    """The key list."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "close"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(HELP_TEXT, id="help-text")

    def action_dismiss(self, result: Any = None) -> Any:  # type: ignore[override]
        return self.dismiss(None)


class SessionScreen(Screen[None]):
    """One session: stacked bars by category, history, top modules, alerts."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "back"),
    ]

    def __init__(self, session_id: str, snapshot: Snapshot) -> None:
        super().__init__()
        self.session_id = session_id
        self._first = snapshot

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status", classes="snapshot-view")
        yield SessionHeaderPanel(self.session_id, id="session-header")
        with VerticalScroll(id="session-body"):
            yield CategoryBarsPanel(self.session_id, id="categories")
            yield HistoryPanel(self.session_id, id="history")
            with Horizontal(id="session-bottom"):
                yield ModulesPanel(self.session_id, id="modules")
                yield AlertsPanel(self.session_id, id="alerts")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#categories").border_title = "memory by category: measured vs predicted"
        self.query_one("#history").border_title = "history"
        self.query_one("#modules").border_title = "top modules by activations"
        self.query_one("#alerts").border_title = "alerts and fixes"
        app = self.app
        if isinstance(app, GpumemTopApp):
            status = self.query_one(StatusBar)
            status.paused = app.paused
            status.sort = app.sort
        for widget in self.query(".snapshot-view"):
            widget.snapshot = self._first  # type: ignore[attr-defined]


class GpumemTopApp(App[None]):
    """The dashboard: devices, processes and sessions; enter opens a session.

    Args:
        builder: builds snapshots (runs in a worker thread).
        interval: seconds between snapshots.
    """

    CSS_PATH = "gpumem.tcss"
    TITLE = "gpumem top"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("p", "toggle_pause", "pause"),
        Binding("s", "cycle_sort", "sort"),
        Binding("question_mark", "help", "help", key_display="?"),
    ]

    snapshot: reactive[Snapshot] = reactive(
        EMPTY_SNAPSHOT, always_update=True, init=False, repaint=False
    )
    paused: reactive[bool] = reactive(False, init=False, repaint=False)
    sort: reactive[str] = reactive(PROCESS_SORTS[0], init=False, repaint=False)

    def __init__(self, builder: Builder, *, interval: float = 1.0) -> None:
        super().__init__()
        self.builder = builder
        self.interval = interval
        self._fetching = False
        self.fetches = 0

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status", classes="snapshot-view")
        yield NoGpuBanner(id="banner", classes="snapshot-view")
        yield DevicesPanel(id="devices", classes="snapshot-view")
        with Vertical(id="tables"):
            yield SessionsTable(id="sessions", classes="snapshot-view")
            yield ProcessesTable(id="processes", classes="snapshot-view")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#devices").border_title = "devices"
        self.query_one("#sessions").border_title = "sessions (enter: open)"
        self.query_one("#processes").border_title = "processes"
        self.query_one("#banner").display = False
        self.query_one(SessionsTable).focus()
        self.fetch()
        self.set_interval(self.interval, self.fetch)

    # -- fetching -------------------------------------------------------------------------------

    def fetch(self) -> None:
        """Start one snapshot build in a thread, unless paused or one is still running."""
        if self.paused or self._fetching:
            return
        self._fetching = True
        self._fetch_worker()

    @work(thread=True, group="snapshot", exit_on_error=False)
    def _fetch_worker(self) -> None:
        try:
            snapshot = self.builder.build()
        except Exception as exc:  # a builder must not raise; if one does, show it
            snapshot = Snapshot(
                time=self.snapshot.time,
                devices=self.snapshot.devices,
                device_error=f"snapshot failed: {exc}",
            )
        self.post_message(SnapshotFetched(snapshot))

    def on_snapshot_fetched(self, message: SnapshotFetched) -> None:
        self._fetching = False
        self.fetches += 1
        if not self.paused:
            self.snapshot = message.snapshot

    def watch_snapshot(self, snapshot: Snapshot) -> None:
        for screen in self.screen_stack:
            for widget in screen.query(".snapshot-view"):
                widget.snapshot = snapshot  # type: ignore[attr-defined]

    # -- actions -------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        """Stop or resume taking snapshots."""
        self.paused = not self.paused

    def watch_paused(self, paused: bool) -> None:
        for screen in self.screen_stack:
            for status in screen.query(StatusBar):
                status.paused = paused

    def action_cycle_sort(self) -> None:
        """Order the processes by the next key (memory, pid, user, command)."""
        index = PROCESS_SORTS.index(self.sort) if self.sort in PROCESS_SORTS else -1
        self.sort = PROCESS_SORTS[(index + 1) % len(PROCESS_SORTS)]

    def watch_sort(self, sort: str) -> None:
        for screen in self.screen_stack:
            for table in screen.query(ProcessesTable):
                table.sort = sort
            for status in screen.query(StatusBar):
                status.sort = sort

    def action_help(self) -> None:
        """Show the key list."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def on_row_table_row_chosen(self, event: RowTable.RowChosen) -> None:
        if isinstance(event.table, SessionsTable):
            self.open_session(event.identity)

    def open_session(self, session_id: str) -> None:
        """Show the detail screen of one session."""
        self.push_screen(SessionScreen(session_id, self.snapshot))
