"""SVG snapshots of the main screens of ``gpumem top`` (scripted data, frozen clock, 120x40).

Regenerate after an intended change with ``pytest tests/tui --snapshot-update`` and review the
SVGs under ``__snapshots__`` before committing them.
"""

from __future__ import annotations

from scripted import LEAK, MIB, job_sessions, make_session, scripted_builder
from textual.pilot import Pilot

from tui.app import GpumemTopApp

SIZE = (120, 40)


async def settle(pilot: Pilot[None]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def app(**kwargs: object) -> GpumemTopApp:
    return GpumemTopApp(scripted_builder(**kwargs), interval=3600)  # type: ignore[arg-type]


def test_main_screen(snap_compare: object) -> None:
    assert snap_compare(app(), terminal_size=SIZE, run_before=settle)  # type: ignore[operator]


def test_main_screen_eight_gpus(snap_compare: object) -> None:
    assert snap_compare(app(gpu_count=8), terminal_size=SIZE, run_before=settle)  # type: ignore[operator]


def test_no_gpu_screen(snap_compare: object) -> None:
    assert snap_compare(app(no_gpu=True), terminal_size=SIZE, run_before=settle)  # type: ignore[operator]


def test_session_screen(snap_compare: object) -> None:
    async def open_first(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("enter")
        await pilot.pause()

    assert snap_compare(app(), terminal_size=SIZE, run_before=open_first)  # type: ignore[operator]


def test_help_screen(snap_compare: object) -> None:
    assert snap_compare(app(), terminal_size=SIZE, press=["question_mark"], run_before=settle)  # type: ignore[operator]


def job_app() -> GpumemTopApp:
    sessions = [make_session("train", 4242, growth=64 * MIB, events=(LEAK,)), *job_sessions()]
    return GpumemTopApp(scripted_builder(gpu_count=3, sessions=sessions), interval=3600)


def test_main_screen_with_a_job(snap_compare: object) -> None:
    async def highlight_the_job(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("down")
        await pilot.pause()

    assert snap_compare(job_app(), terminal_size=SIZE, run_before=highlight_the_job)  # type: ignore[operator]


def test_job_screen(snap_compare: object) -> None:
    async def open_the_job(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("down", "enter")
        await pilot.pause()

    assert snap_compare(job_app(), terminal_size=SIZE, run_before=open_the_job)  # type: ignore[operator]
