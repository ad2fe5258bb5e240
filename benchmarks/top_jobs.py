"""``gpumem top`` with 256 sessions in 32 jobs (8 ranks each): what one refresh costs.

Run::

    PYTHONPATH=. python benchmarks/top_jobs.py [--seconds 10]

Setup as in ``benchmarks/top_refresh.py`` (8 scripted GPUs, 200 processes), with 256 sessions
written at 10 samples plus one step end a simulated second, each with a rank and a job id in
its metadata. The reader is the one ``gpumem top`` makes (``ranks_by_step``: a job's ranks are
read from their step ends until the job is opened). Prints the CPU time of building a snapshot
(the worker thread: reading the streams and grouping the jobs), of the headless app applying
it (the UI thread), on the main screen (32 job rows) and with one job's screen open (its 8
ranks read in full). Target: build + apply ≤ 30 ms. Medians over the refreshes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import top_refresh
from top_refresh import Writers, apply_costs, scripted_source

from profiler.session.reader import SessionReader
from profiler.session.writer import SessionWriter
from tui.snapshot import SnapshotBuilder

JOBS, RANKS = 32, 8


class JobWriters(Writers):
    """256 sessions: 32 jobs of 8 ranks."""

    def __init__(self, home: str, start: float, source) -> None:  # type: ignore[no-untyped-def]
        self.source = source
        self.clock = start
        self.writers = [
            SessionWriter.create(
                home=home,
                name=f"train{job}",
                start_time=start + (job * RANKS + rank) * 1e-3,
                interval=0.0,
                flush_thread=False,
                prune=False,
                device=f"cuda:{rank}",
                device_index=rank,
                rank=rank,
                local_rank=rank,
                world_size=RANKS,
                job_id=f"job-{job}",
            )
            for job in range(JOBS)
            for rank in range(RANKS)
        ]
        self.step = 0
        self.written = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    top_refresh.SESSIONS = JOBS * RANKS
    with tempfile.TemporaryDirectory() as home:
        start = time.time()
        source = scripted_source()
        writers = JobWriters(home, start, source)
        reader = SessionReader(home, clock=lambda: writers.clock, ranks_by_step=True)
        builder = SnapshotBuilder(source, reader, clock=lambda: writers.clock)
        builder.build()
        figures = {}
        for label, focus in (("main screen", ()), ("one job open", ("job-3",))):
            builder.focus = (frozenset(focus), frozenset())
            build = []
            for _ in range(args.seconds):
                writers.one_second()
                t = time.process_time()
                snapshot = builder.build()
                build.append(time.process_time() - t)
            figures[label] = statistics.median(build) * 1e3
        builder.focus = (frozenset(), frozenset())
        apply = statistics.median(asyncio.run(apply_costs(builder, writers, 10))) * 1e3
        writers.close()
    jobs = len(snapshot.jobs())
    print(f"setup: {JOBS} jobs x {RANKS} ranks = {JOBS * RANKS} sessions; {jobs} jobs grouped")
    for label, build_ms in figures.items():
        print(f"{label:13s}: build {build_ms:5.1f} ms + apply {apply:5.1f} ms = "
              f"{build_ms + apply:5.1f} ms CPU per refresh (target 30 ms)")  # fmt: skip
    return 0 if max(figures.values()) + apply <= 30 else 1


if __name__ == "__main__":
    raise SystemExit(main())
