"""``gpumem top``: the Textual dashboard.

The app never waits on NVML or disk. A timer (``set_interval``) starts a thread worker that asks
the :class:`~tui.snapshot.SnapshotBuilder` for a snapshot and posts :class:`SnapshotFetched`; the
handler stores it in the ``snapshot`` reactive and hands it to every snapshot widget, which
redraws from it. A slow source only delays the next frame (one fetch at a time); a failing one
shows its message in place. Tests inject a scripted builder and a frozen clock.

Keys: ``q`` quit, ``p`` pause, ``s`` sort processes, arrows and ``tab`` move, ``enter`` opens the
session under the cursor, or a job's per-rank table and from there one rank (``escape`` goes
back), ``?`` help. Under the sessions table, the highlighted row's categories: measured beside
predicted.
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

from tui.snapshot import EMPTY_SNAPSHOT, PROCESS_SORTS, Snapshot, SnapshotBuilder
from tui.widgets.jobs import job_id_of
from tui.widgets.panels import (
    AlertsPanel,
    CategoryBarsPanel,
    CategoryComparePanel,
    DevicesPanel,
    HistoryPanel,
    JobHeaderPanel,
    ModulesPanel,
    NoGpuBanner,
    ProcessesTable,
    RanksTable,
    SessionHeaderPanel,
    SessionsTable,
    StatusBar,
)
from tui.widgets.table import RowTable

__all__ = ["GpumemTopApp", "HelpScreen", "JobScreen", "SessionScreen", "SnapshotFetched"]

HELP_TEXT = """\
gpumem top — live GPU memory

  q          quit
  p          pause / resume updates
  s          sort processes (memory, pid, user, command)
  ↑ ↓        move in a table
  tab        next panel (shift+tab: previous)
  enter      open the session or job under the cursor
             (a job: its ranks; enter again: one rank)
  escape     back from a session, a job or this help
  ?          this help

Sessions: live ones first; ended ones stay dimmed for 10 minutes.
A job (the ranks of one distributed run) is one row: ranks seen
of the world size, peak (max, min / mean), imbalance, the rank
nearest its capacity, the slowest rank's step. Under the table: the
highlighted row's bytes per category, measured beside predicted
(for a job, its rank with the highest peak).
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


class _DetailScreen(Screen[None]):
    """A screen opened from a table (escape goes back), drawn from the latest snapshot."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "back"),
    ]
    #: border titles by widget id
    TITLES: ClassVar[dict[str, str]] = {}

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self._first = snapshot

    def on_mount(self) -> None:
        for widget_id, title in self.TITLES.items():
            self.query_one(f"#{widget_id}").border_title = title
        app = self.app
        if isinstance(app, GpumemTopApp):
            status = self.query_one(StatusBar)
            status.paused = app.paused
            status.sort = app.sort
        for widget in self.query(".snapshot-view"):
            widget.snapshot = self._first  # type: ignore[attr-defined]


class SessionScreen(_DetailScreen):
    """One session: stacked bars by category, history, top modules, alerts."""

    TITLES: ClassVar[dict[str, str]] = {
        "categories": "memory by category: measured vs predicted",
        "history": "history",
        "modules": "top modules by activations",
        "alerts": "alerts and fixes",
    }

    def __init__(self, session_id: str, snapshot: Snapshot) -> None:
        super().__init__(snapshot)
        self.session_id = session_id

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


class JobScreen(_DetailScreen):
    """One job: its header, the per-rank table and the highlighted rank's categories."""

    TITLES: ClassVar[dict[str, str]] = {"ranks": "ranks (enter: open)"}

    def __init__(self, job_id: str, snapshot: Snapshot) -> None:
        super().__init__(snapshot)
        self.job_id = job_id

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status", classes="snapshot-view")
        yield JobHeaderPanel(self.job_id, id="job-header")
        yield RanksTable(self.job_id, id="ranks")
        yield CategoryComparePanel(id="compare")
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(RanksTable).focus()


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
            yield CategoryComparePanel(id="compare")
            yield ProcessesTable(id="processes", classes="snapshot-view")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#devices").border_title = "devices"
        self.query_one("#sessions").border_title = "sessions and jobs (enter: open)"
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
        if isinstance(self.builder, SnapshotBuilder):  # read what the open screens show in full
            jobs = {s.job_id for s in self.screen_stack if isinstance(s, JobScreen)}
            sessions = {s.session_id for s in self.screen_stack if isinstance(s, SessionScreen)}
            self.builder.focus = (frozenset(jobs), frozenset(sessions))
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
        if isinstance(event.table, SessionsTable | RanksTable):
            job_id = job_id_of(event.identity)
            if job_id is not None:
                self.open_job(job_id)
            else:
                self.open_session(event.identity)

    def on_row_table_row_highlighted(self, event: RowTable.RowHighlighted) -> None:
        if isinstance(event.table, SessionsTable | RanksTable):
            for panel in event.table.screen.query(CategoryComparePanel):
                panel.select(event.identity)

    def open_session(self, session_id: str) -> None:
        """Show the detail screen of one session."""
        self.push_screen(SessionScreen(session_id, self.snapshot))
        self.fetch()  # its samples now, when it is a rank read from its step ends

    def open_job(self, job_id: str) -> None:
        """Show the per-rank table of one job."""
        self.push_screen(JobScreen(job_id, self.snapshot))
        self.fetch()
