"""What the session stream costs the tracked program: µs per sample, written or rate-limited.

Run::

    PYTHONPATH=. python benchmarks/stream_write.py [--samples 50000]

Prints, for ``SessionWriter.on_sample``: the cost of a sample that is written (interval 0, with
allocator and NVML readings), of one that the rate limit drops (interval 0.1 s, samples arriving
back to back), and of ``on_step`` (every step end is written). Target: a written sample costs at
most 20 µs. Figures are medians of 5 runs of CPU time (``time.process_time``; wall time is
printed beside it); the flusher thread is off so that only the hot path is measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from profiler.records import AllocatorReading, NvmlReading, Phase, Sample, StepRecord
from profiler.session.writer import SessionWriter

GIB = 1024**3


def _sample(t: float, step: int) -> Sample:
    values = (2 * GIB, 1024, 2 * GIB, 4 * GIB, 6 * GIB + step, 0, 256 * 2**20, 4096)
    return Sample(
        t,
        step,
        Phase.FORWARD,
        "transformer.h.11.mlp.c_proj",
        values,
        sum(values),
        AllocatorReading(allocated=sum(values), reserved=sum(values) + GIB, active=sum(values)),
        NvmlReading(process_used=20 * GIB, device_used=21 * GIB, device_total=80 * GIB),
    )


def per_call_us(interval: float, count: int, *, steps: bool = False) -> tuple[float, float]:
    """Median (CPU, wall) µs per call over 5 runs of ``count`` calls."""
    runs = []
    walls = []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as home:
            writer = SessionWriter.create(
                home=home, name="bench", interval=interval, flush_thread=False, prune=False
            )
            t0 = time.time()
            samples = [_sample(t0 + i * 1e-6, i) for i in range(count)]
            values = samples[0].bytes
            records = [
                StepRecord(i, t0 + i * 1e-3, 1e-3, values, sum(values), sum(values), values)
                for i in range(count)
            ]
            start = time.process_time()
            wall = time.perf_counter()
            if steps:
                for record in records:
                    writer.on_step(record)
            else:
                for sample in samples:
                    writer.on_sample(sample)
            runs.append((time.process_time() - start) / count * 1e6)
            walls.append((time.perf_counter() - wall) / count * 1e6)
            writer.close()
    return statistics.median(runs), statistics.median(walls)


def main() -> int:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    args = parser.parse_args()
    written = per_call_us(0.0, args.samples)
    dropped = per_call_us(0.1, args.samples)
    step_end = per_call_us(0.1, args.samples, steps=True)
    print("per call             CPU µs   wall µs")
    print(f"written sample     {written[0]:8.2f}  {written[1]:8.2f}   (target: CPU ≤ 20 µs)")
    print(
        f"rate-limited       {dropped[0]:8.2f}  {dropped[1]:8.2f}   (interval 0.1 s, back to back)"
    )
    print(f"step end (on_step) {step_end[0]:8.2f}  {step_end[1]:8.2f}")
    return 0 if written[0] <= 20.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
