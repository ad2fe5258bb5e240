"""SVG snapshots of the main screens of ``gpumem top`` (scripted data, frozen clock, 120x40).

Regenerate after an intended change with ``pytest tests/tui --snapshot-update`` and review the
SVGs under ``__snapshots__`` before committing them.
"""

from __future__ import annotations

from scripted import scripted_builder
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
