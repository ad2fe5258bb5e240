"""``gpumem top`` driven headless with a Pilot over scripted sources (no NVML, frozen clock)."""

from __future__ import annotations

import dataclasses
import io
import threading

from rich.console import Console
from rich.text import Text
from scripted import FIXED_TIME, GIB, ScriptedSource, make_session, processes, scripted_builder
from textual.pilot import Pilot
from textual.widgets import Static

from profiler.records import CATEGORIES
from tui.app import GpumemTopApp, HelpScreen, SessionScreen
from tui.snapshot import Snapshot, SnapshotBuilder
from tui.widgets.panels import (
    AlertsPanel,
    DevicesPanel,
    HistoryPanel,
    NoGpuBanner,
    ProcessesTable,
    SessionsTable,
    StatusBar,
)
from tui.widgets.table import RowTable

SIZE = (120, 40)


async def settle(pilot: Pilot[None]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def column(table: RowTable, index: int) -> list[str]:
    return table.cells(index)


def plain(widget: Static) -> str:
    """What a Static widget shows, as plain text (rendered at 110 columns)."""
    content = widget.content
    if isinstance(content, str | Text):
        return str(content)
    console = Console(file=io.StringIO(), width=110, color_system=None)
    console.print(content)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())  # type: ignore[attr-defined]


async def test_first_snapshot_fills_every_panel() -> None:
    app = GpumemTopApp(scripted_builder(), interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.snapshot.time == FIXED_TIME
        sessions = app.query_one(SessionsTable)
        assert column(sessions, 0) == ["train", "eval", "old-run"]
        assert column(sessions, 2) == ["-", "1/2", "-"]
        assert column(sessions, 10) == ["live", "live", "ok"]
        # peak as a share of the session's GPU (80 GiB each)
        peaks = [s.peak for s in app.snapshot.sessions]
        assert (
            column(sessions, 9) == [f"{p / (80 * GIB):.0%}" for p in peaks] == ["19%"] + ["18%"] * 2
        )
        assert [style for _, _, style in sessions.rows] == ["", "", "dim"]  # ended: dimmed
        assert column(app.query_one(ProcessesTable), 0) == ["1014", "1007", "1021", "1000"]
        assert not app.query_one(NoGpuBanner).display
        status = plain(app.query_one(StatusBar))
        assert status.startswith("gpumem top  08:00:00 UTC  ·  2 GPUs  ·  4 processes  ·  2 live")
        screen_text = app.export_screenshot()
        assert "GPU0" in screen_text and "GPU1" in screen_text and "GPU2" not in screen_text


async def test_keys_sort_pause_tab_enter_escape_help_quit() -> None:
    builder = scripted_builder()
    app = GpumemTopApp(builder, interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        processes = app.query_one(ProcessesTable)
        await pilot.press("s")
        assert app.sort == "pid"
        assert column(processes, 0) == ["1000", "1007", "1014", "1021"]
        await pilot.press("s", "s")
        assert app.sort == "command"
        await pilot.press("s")
        assert app.sort == "memory"
        assert "sort: memory" in plain(app.query_one(StatusBar))

        # pause: new snapshots are not taken while paused
        await pilot.press("p")
        assert app.paused and "PAUSED" in plain(app.query_one(StatusBar))
        fetches = app.fetches
        app.fetch()
        await settle(pilot)
        assert app.fetches == fetches
        await pilot.press("p")
        assert not app.paused
        app.fetch()
        await settle(pilot)
        assert app.fetches == fetches + 1

        # tab moves the focus between the tables
        assert app.focused is app.query_one(SessionsTable)
        await pilot.press("tab")
        assert app.focused is processes
        await pilot.press("shift+tab")
        assert app.focused is app.query_one(SessionsTable)

        # arrows and enter open the second session; escape comes back
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, SessionScreen)
        assert app.screen.session_id == make_session("eval", 4243).id
        await pilot.press("escape")
        assert not isinstance(app.screen, SessionScreen)

        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

        await pilot.press("q")
    assert app.return_code == 0


async def test_session_screen_shows_alerts_history_and_follows_updates() -> None:
    builder = scripted_builder()
    app = GpumemTopApp(builder, interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SessionScreen)
        alerts = plain(screen.query_one(AlertsPanel))
        assert alerts.splitlines()[0].startswith("WARNING  OOM risk: full in 17m13s")
        assert "activations grow 64.00 MiB/step at train.py:57" in alerts
        history = plain(screen.query_one(HistoryPanel)).splitlines()
        named = [line.split()[0] for line in history]
        assert named == ["total", "weights", "gradients", "optimizer", "activations", "temporaries"]
        assert len(CATEGORIES) == 8
        # the session ends: the next snapshot drops it and the screen says so, without a crash
        builder.sessions.views = []  # type: ignore[union-attr]
        app.fetch()
        await settle(pilot)
        assert plain(screen.query_one(AlertsPanel)) == "this session is no longer listed"


async def test_no_gpu_shows_a_banner_and_the_rest_works() -> None:
    app = GpumemTopApp(scripted_builder(no_gpu=True), interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        banner = app.query_one(NoGpuBanner)
        assert banner.display
        assert plain(banner).startswith(
            "No GPU: NVML library not available (NVML Shared Library Not Found)."
        )
        assert not app.query_one(DevicesPanel).display
        assert column(app.query_one(SessionsTable), 0) == ["train", "eval", "old-run"]
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SessionScreen)


async def test_failing_sources_show_messages_in_place() -> None:
    source = ScriptedSource(device_error=RuntimeError("GPU is lost"), process_error=OSError("no"))
    builder = SnapshotBuilder(source, None, clock=lambda: FIXED_TIME)
    app = GpumemTopApp(builder, interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert plain(app.query_one(NoGpuBanner)).startswith("No GPU: devices unavailable: GPU is")
        assert app.query_one(ProcessesTable).border_subtitle == "processes unavailable: no"


class _Blocking:
    """A builder that blocks until released, like NVML hanging on a sick GPU."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def build(self) -> Snapshot:
        self.started.set()
        self.release.wait(10)
        return Snapshot(time=FIXED_TIME)


async def test_a_hanging_source_never_blocks_the_keys() -> None:
    builder = _Blocking()
    app = GpumemTopApp(builder, interval=0.05)
    async with app.run_test(size=SIZE) as pilot:
        assert builder.started.wait(5)
        await pilot.press("p")  # handled while the worker is stuck
        assert app.paused
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert app.fetches == 0  # one fetch at a time: no pile-up of stuck workers
        builder.release.set()
        await settle(pilot)
        assert app.fetches == 1
        assert app.snapshot.time == 0.0  # paused: the late snapshot is not shown


async def test_a_raising_builder_shows_its_error() -> None:
    class Broken:
        def build(self) -> Snapshot:
            raise ValueError("broken builder")

    app = GpumemTopApp(Broken(), interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.snapshot.device_error == "snapshot failed: broken builder"


async def test_cursor_follows_the_process_when_rows_reorder() -> None:
    builder = scripted_builder()
    app = GpumemTopApp(builder, interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("tab", "down", "down")
        table = app.query_one(ProcessesTable)
        assert table.selected_identity() == "1021:1" and table.cursor_row == 2
        source = builder.source
        assert isinstance(source, ScriptedSource)
        source.process_list = [
            dataclasses.replace(p, gpu_memory=64 * GIB) if p.pid == 1021 else p
            for p in source.process_list
        ]
        app.fetch()
        await settle(pilot)
        assert column(table, 0) == ["1021", "1014", "1007", "1000"]
        assert table.selected_identity() == "1021:1" and table.cursor_row == 0


async def test_paging_through_200_processes() -> None:
    builder = scripted_builder()
    source = builder.source
    assert isinstance(source, ScriptedSource)
    source.process_list = processes(200)
    app = GpumemTopApp(builder, interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("tab")
        table = app.query_one(ProcessesTable)
        assert table.row_count == 200
        await pilot.press("end")
        assert table.cursor_row == 199
        assert table.scroll_offset.y == 200 + 1 - table.size.height  # last row in view
        await pilot.press("home")
        assert (table.cursor_row, table.scroll_offset.y) == (0, 0)
        await pilot.press("pagedown")
        assert table.cursor_row == table.size.height - 2
        await pilot.press("enter")  # enter on a process opens nothing
        assert not isinstance(app.screen, SessionScreen)


async def test_enter_on_an_empty_sessions_table_does_nothing() -> None:
    app = GpumemTopApp(scripted_builder(sessions=[]), interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("enter", "down", "up")
        assert not isinstance(app.screen, SessionScreen)
        assert app.query_one(SessionsTable).selected_session() is None
