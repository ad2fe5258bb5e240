"""What one Prometheus scrape of ``gpumem export prometheus`` costs with 64 sessions.

Run::

    PYTHONPATH=. python benchmarks/export_scrape.py [--scrapes 20]

Setup: 8 jobs × 8 ranks = 64 live sessions on disk, each written by a
:class:`~profiler.session.writer.SessionWriter` (rank, world size and job id in its metadata) at
10 samples plus one step end per simulated second. Between two scrapes every session appends
``--seconds-between`` (default 15, Prometheus's usual interval) seconds of stream. A scrape is
what the HTTP handler does: poll the sessions and render the text exposition
(``generate_latest``).

Prints the median and worst CPU and wall time per scrape. Target: under 50 ms of CPU per scrape
(what a scrape costs the host; the wall time, printed beside it, also counts the waits for a
CPU that other processes hold, which on a shared machine says more about them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from prometheus_client import generate_latest

from profiler.export.prometheus import registry_for
from profiler.export.tail import StreamTail
from profiler.records import Phase, Sample, StepRecord
from profiler.session.writer import SessionWriter

GIB = 1024**3
JOBS, RANKS, RATE = 8, 8, 10


def writers(home: str, start: float) -> list[SessionWriter]:
    return [
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
            predicted={"weights": 2 * GIB, "gradients": 2 * GIB, "optimizer": 4 * GIB},
        )
        for job in range(JOBS)
        for rank in range(RANKS)
    ]


def write(sessions: list[SessionWriter], clock: float, step: int, seconds: int) -> None:
    for second in range(seconds):
        for tick in range(RATE):
            t = clock + second + tick / RATE
            for n, writer in enumerate(sessions):
                values = (2 * GIB, 0, 2 * GIB, 4 * GIB, (n + tick) * 2**20, 0, 2**20, 0)
                writer.on_sample(Sample(t, step, Phase.FORWARD, "h.0", values, sum(values)))
        for writer in sessions:
            values = (2 * GIB, 0, 2 * GIB, 4 * GIB, 0, 0, 0, 0)
            end = clock + second + 1
            writer.on_step(StepRecord(step, end, 1.0, values, sum(values), sum(values), values))
        step += 1
    for writer in sessions:
        writer.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--seconds-between", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        clock = time.time()
        sessions = writers(home, clock)
        registry = registry_for(StreamTail(home, clock=lambda: clock))
        generate_latest(registry)  # first open of every file
        cpu, wall = [], []
        for n in range(args.scrapes):
            write(sessions, clock, n * args.seconds_between, args.seconds_between)
            clock += args.seconds_between
            t0, c0 = time.perf_counter(), time.process_time()
            text = generate_latest(registry)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
        for writer in sessions:
            writer.close()
    series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
    print(f"setup: {JOBS} jobs x {RANKS} ranks = {JOBS * RANKS} sessions, {series} series")
    print(
        f"scrape: median {statistics.median(cpu) * 1e3:.1f} ms CPU "
        f"({statistics.median(wall) * 1e3:.1f} ms wall), worst {max(cpu) * 1e3:.1f} ms CPU "
        f"({max(wall) * 1e3:.1f} ms wall) (target < 50 ms CPU)"
    )
    return 0 if statistics.median(cpu) < 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
