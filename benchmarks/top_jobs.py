"""``gpumem top`` with 256 sessions in 32 jobs (8 ranks each): one refresh, and the grouping.

Run::

    PYTHONPATH=. python benchmarks/top_jobs.py [--seconds 5]

Setup as in ``benchmarks/top_refresh.py`` (8 scripted GPUs, 200 processes), with 256 sessions
written at 10 samples plus one step end a simulated second, each with a rank and a job id in
its metadata. Prints the CPU time of building a snapshot (the worker thread), of grouping its
sessions into jobs (``tui.widgets.render.snapshot_jobs``, what ``--once`` and ``--json`` add),
and of the headless app applying it (the UI thread). Target: build + group + apply ≤ 30 ms.
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
from tui.widgets.render import snapshot_jobs

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
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    top_refresh.SESSIONS = JOBS * RANKS
    with tempfile.TemporaryDirectory() as home:
        start = time.time()
        source = scripted_source()
        writers = JobWriters(home, start, source)
        reader = SessionReader(home, clock=lambda: writers.clock)
        builder = SnapshotBuilder(source, reader, clock=lambda: writers.clock)
        builder.build()
        build, group = [], []
        for _ in range(args.seconds):
            writers.one_second()
            t = time.process_time()
            snapshot = builder.build()
            build.append(time.process_time() - t)
            t = time.process_time()
            jobs = snapshot_jobs(snapshot)
            group.append(time.process_time() - t)
        apply = asyncio.run(apply_costs(builder, writers, 5))
        writers.close()
    b, g, a = (statistics.median(x) * 1e3 for x in (build, group, apply))
    print(f"setup: {JOBS} jobs x {RANKS} ranks = {JOBS * RANKS} sessions; {len(jobs)} jobs grouped")
    print(f"build {b:.1f} ms + group {g:.2f} ms + apply {a:.1f} ms = {b + g + a:.1f} ms CPU")
    print("target: 30 ms per refresh")
    return 0 if b + g + a <= 30 else 1


if __name__ == "__main__":
    raise SystemExit(main())
