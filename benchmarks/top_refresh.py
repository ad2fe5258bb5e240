"""What one ``gpumem top`` refresh costs, and whether the reader keeps up with busy sessions.

Run::

    PYTHONPATH=. python benchmarks/top_refresh.py [--seconds 10]

Setup: 8 scripted GPUs and 200 processes (a :class:`~profiler.backends.fake.FakeSource`, no
NVML; 20 processes change their memory every second, which reorders the table), and 16 real
sessions on disk, each written by a :class:`~profiler.session.writer.SessionWriter` at 10
samples a second plus one step end a second. The app runs headless at 160x60.

Prints:

1. *build*: CPU time of one :meth:`SnapshotBuilder.build` (device source + tailing 16 sessions
   that each appended one second of stream), the part that runs on the worker thread;
2. *apply*: CPU time for the headless Textual app to take that snapshot and repaint (widgets
   refill, the 200-row table, the compositor), the part on the UI thread;
3. *keeps up*: after ``--seconds`` of simulated writing (1 poll a simulated second), whether
   the reader saw every written sample, and its CPU per poll.

Target: build + apply ≤ 30 ms of CPU. Medians over the refreshes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time

from profiler.backends.base import DeviceInfo, ProcessInfo
from profiler.backends.fake import FakeSource
from profiler.records import Phase, Sample, StepRecord
from profiler.session.reader import SessionReader
from profiler.session.writer import SessionWriter
from tui.snapshot import SnapshotBuilder

GIB = 1024**3
SESSIONS = 16
RATE = 10  # samples per second per session


def scripted_source() -> FakeSource:
    """8 GPUs and 200 processes."""
    devices = [
        DeviceInfo(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", 80 * GIB, (10 + 8 * i) * GIB,
                   (70 - 8 * i) * GIB, 50 + i, 40 + i, 300.0 + i)
        for i in range(8)
    ]  # fmt: skip
    processes = [
        ProcessInfo(10_000 + i, i % 8, (i % 13 + 1) * GIB // 4, "python", f"user{i % 9}",
                    f"python train_{i}.py --config configs/run_{i}.yaml")
        for i in range(200)
    ]  # fmt: skip
    return FakeSource(devices, processes)


class Writers:
    """16 sessions, each writing ``RATE`` samples per simulated second; 20 processes change
    their memory every second (so the process table reorders)."""

    def __init__(self, home: str, start: float, source: FakeSource) -> None:
        self.source = source
        self.clock = start
        self.writers = [
            SessionWriter.create(
                home=home,
                name=f"job{i}",
                start_time=start + i * 1e-3,
                interval=0.0,
                flush_thread=False,
                prune=False,
                device=f"cuda:{i % 8}",
                device_index=i % 8,
            )
            for i in range(SESSIONS)
        ]
        self.step = 0
        self.written = 0

    def one_second(self) -> None:
        """Every session writes one second of stream: RATE samples and a step end."""
        processes = self.source.process_list
        for k in range(20):
            index = (self.step * 37 + k * 11) % len(processes)
            old = processes[index]
            processes[index] = dataclasses.replace(
                old, gpu_memory=(old.gpu_memory or 0) + (k + 1) * 2**20
            )
        for tick in range(RATE):
            t = self.clock + tick / RATE
            for n, writer in enumerate(self.writers):
                values = (2 * GIB, 0, 2 * GIB, 4 * GIB, (n + tick) * 2**20, 0, 2**20, 0)
                writer.on_sample(Sample(t, self.step, Phase.FORWARD, "h.0", values, sum(values)))
                self.written += 1
        for writer in self.writers:
            values = (2 * GIB, 0, 2 * GIB, 4 * GIB, 0, 0, 0, 0)
            record = StepRecord(self.step, self.clock + 1, 1.0, values, sum(values),
                                sum(values) + GIB, values)  # fmt: skip
            writer.on_step(record)
            writer.flush()
        self.step += 1
        self.clock += 1.0

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


async def apply_costs(builder: SnapshotBuilder, writers: Writers, rounds: int) -> list[float]:
    """CPU seconds for the app to take each new snapshot and repaint."""
    from tui.app import GpumemTopApp

    app = GpumemTopApp(builder, interval=3600)
    costs = []
    async with app.run_test(size=(160, 60)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        for _ in range(rounds):
            writers.one_second()
            snapshot = builder.build()
            start = time.process_time()
            app.snapshot = snapshot
            await pilot.pause()
            costs.append(time.process_time() - start)
    return costs


def main() -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        start = time.time()
        source = scripted_source()
        writers = Writers(home, start, source)
        reader = SessionReader(home, clock=lambda: writers.clock)
        builder = SnapshotBuilder(source, reader, clock=lambda: writers.clock)
        builder.build()  # first open of every file
        build_costs = []
        poll_costs = []
        for _ in range(args.seconds):
            writers.one_second()
            t = time.process_time()
            snapshot = builder.build()
            build_costs.append(time.process_time() - t)
        seen = sum(len(v.history) for v in snapshot.sessions)
        expected = min(writers.written, SESSIONS * reader.history)
        for _ in range(5):
            writers.one_second()
            t = time.process_time()
            reader.poll()
            poll_costs.append(time.process_time() - t)
        apply = asyncio.run(apply_costs(builder, writers, 10))
        writers.close()
    build_ms = statistics.median(build_costs) * 1e3
    apply_ms = statistics.median(apply) * 1e3
    print(f"setup: 8 GPUs, 200 processes, {SESSIONS} sessions x {RATE} samples/s")
    print(f"build (worker thread) : {build_ms:6.2f} ms CPU per refresh")
    print(f"apply (UI thread)     : {apply_ms:6.2f} ms CPU per refresh")
    print(f"total                 : {build_ms + apply_ms:6.2f} ms CPU (target ≤ 30 ms)")
    print(
        f"reader: saw {seen} of {expected} samples written in {args.seconds} s "
        f"({'keeps up' if seen == expected else 'FELL BEHIND'}); "
        f"{statistics.median(poll_costs) * 1e3:.2f} ms CPU per poll of 16 sessions"
    )
    return 0 if seen == expected and build_ms + apply_ms <= 30 else 1


if __name__ == "__main__":
    raise SystemExit(main())
