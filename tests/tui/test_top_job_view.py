"""One view of a job in the interactive ``gpumem top``: one row, enter for its ranks, enter for one.

Driven headless with a Pilot over scripted sessions (frozen clock): a job of 3 ranks (of 4),
rank r with (r + 1) x the activations and temporaries, rank 1 two steps behind.
"""

from __future__ import annotations

from scripted import GIB, MIB, job_sessions, make_session, scripted_builder
from test_top_app import SIZE, column, plain, settle

from tui.app import GpumemTopApp, JobScreen, SessionScreen
from tui.widgets.jobs import JOB_PREFIX
from tui.widgets.panels import CategoryComparePanel, JobHeaderPanel, RanksTable, SessionsTable


def sessions() -> list:  # type: ignore[type-arg]
    return [make_session("train", 4242), *job_sessions(), make_session("old", 4100, live=False)]


def rank_peak(rank: int) -> int:
    """Rank r's peak: weights 2 + gradients 2 + optimizer 4 GiB, then (r + 1) x 256 MiB of
    temporaries and (r + 1) x 6 GiB of activations (make_session's forward sample)."""
    return 8 * GIB + (rank + 1) * (256 * MIB + 6 * GIB)


def table_rows(panel: CategoryComparePanel) -> list[list[str]]:
    """The header, measured and predicted rows of the panel's table (not its bars)."""
    lines = [line.split() for line in plain(panel).splitlines() if "█" not in line]
    start = next(i for i, words in enumerate(lines) if words and words[0] == "weights")
    return lines[start : start + 3]


async def test_a_job_is_one_row_with_its_figures_across_ranks() -> None:
    app = GpumemTopApp(scripted_builder(gpu_count=3, sessions=sessions()), interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.query_one(SessionsTable)
        assert [identity for identity, _, _ in table.rows][1] == JOB_PREFIX + "j7"
        assert column(table, 0) == ["train", "▸ ddp-train [j7]", "old"]
        (_, job, _), peaks = table.rows[1], [rank_peak(r) for r in range(3)]
        assert peaks == [int(14.25 * GIB), int(20.5 * GIB), int(26.75 * GIB)]
        name, pid, ranks, device, step, current, peak, min_mean, imbalance, nearest, status = job
        assert (pid, ranks, device, status) == ("-", "3/4", "3×cuda", "live")
        assert step == "17 (r1)"  # rank 1 is two steps behind
        assert (peak, min_mean) == ("26.75 GiB", "14.25 GiB / 20.50 GiB")
        assert imbalance == f"{(peaks[2] - peaks[0]) / peaks[2]:.0%}" == "47%"
        assert nearest == f"r2 {peaks[2] / (80 * GIB):.0%}" == "r2 33%"
        assert current == "8.75 GiB"  # the largest current: rank 2's 8 GiB + 3 x 256 MiB


async def test_enter_opens_the_ranks_then_one_rank_and_escape_goes_back() -> None:
    app = GpumemTopApp(scripted_builder(gpu_count=3, sessions=sessions()), interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down", "enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobScreen) and screen.job_id == "j7"
        ranks = screen.query_one(RanksTable)
        assert column(ranks, 0) == ["0", "1", "2"]
        assert column(ranks, 5) == ["19", "17", "19"]
        assert column(ranks, 7) == ["14.25 GiB", "20.50 GiB", "26.75 GiB"]
        header = plain(screen.query_one(JobHeaderPanel))
        assert header.startswith("job j7  ·  3/4 ranks  ·  peak min 14.25 GiB · max 26.75 GiB")
        assert "slowest rank 1 at step 17" in header
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, SessionScreen)
        assert app.screen.session_id == job_sessions()[1].id
        await pilot.press("escape")
        assert app.screen is screen
        await pilot.press("escape")
        assert not isinstance(app.screen, JobScreen | SessionScreen)
        assert app.query_one(SessionsTable).selected_session() == JOB_PREFIX + "j7"


async def test_the_main_screen_shows_the_highlighted_row_measured_beside_predicted() -> None:
    app = GpumemTopApp(scripted_builder(gpu_count=3, sessions=sessions()), interval=3600)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        panel = app.query_one(CategoryComparePanel)
        assert str(panel.border_title).startswith("train: measured at the last step's peak")
        header, measured, predicted = table_rows(panel)
        assert header == ["weights", "gradients", "optimizer", "activations", "temporaries"]
        # at the last step's peak: 2 + 2 + 4 GiB, activations 6 GiB + 19 x 0 growth, 256 MiB
        assert measured == ["measured", "2.00", "GiB", "2.00", "GiB", "4.00", "GiB", "6.00",
                            "GiB", "256.00", "MiB"]  # fmt: skip
        assert predicted == ["predicted", "2.00", "GiB", "2.00", "GiB", "4.00", "GiB", "5.00",
                             "GiB", "-"]  # fmt: skip
        await pilot.press("down")  # the job: its rank with the highest peak (rank 2)
        await pilot.pause()
        assert str(panel.border_title).startswith("job j7, rank 2 (highest peak): measured")
        measured = table_rows(panel)[1]
        assert measured[7:] == ["18.00", "GiB", "768.00", "MiB"]  # 3 x 6 GiB, 3 x 256 MiB
        await pilot.press("enter")  # the job screen follows its own cursor
        await pilot.pause()
        job_panel = app.screen.query_one(CategoryComparePanel)
        assert str(job_panel.border_title).startswith("ddp-train rank 0: measured")
        await pilot.press("down")
        await pilot.pause()
        assert str(job_panel.border_title).startswith("ddp-train rank 1: measured")
