"""Benchmark: the leak detector's cost per step against a big-ops training step.

Run: ``PYTHONPATH=. python benchmarks/leaks.py [--steps 5] [--calls 20000]``

1. A big-ops step on CPU: a 2-layer transformer encoder (d_model 512, 8 heads, feed-forward 2048),
   batch 8, sequence 256, forward + backward + AdamW. Median wall time of ``--steps`` steps.
2. The detector's per-step cost: :meth:`LeakDetector.on_step` fed ``--calls`` step records over a
   full window, in two cases: steady memory (the common case) and every category jittering (so
   the full Theil–Sen and Mann–Kendall test runs on all nine series each step, the worst case
   outside a hunt).
3. A leak hunt's one-off costs in this process: the tensor census (``gc.get_objects()``) taken at
   each hunt step end, and the holder search at the hunt's end. At most ``max_hunts`` (4) hunts
   run per session, and only after growth is suspected.

Prints each figure and the ratio of the per-step cost to the big-ops step (target: at most 1%).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def big_ops_step_seconds(steps: int) -> float:
    """Median seconds of one transformer training step (d_model 512, 2 layers, seq 256, b 8)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(8, 256, 512)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if i:  # the first step creates AdamW's state
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def detector_seconds_per_step(calls: int, *, jitter: bool) -> float:
    """Mean seconds of one ``LeakDetector.on_step`` over ``calls`` step records."""
    from profiler.leaks import LeakDetector
    from profiler.records import CATEGORIES, StepRecord
    from profiler.units import MiB

    rng = random.Random(0)
    base = [200 * MiB, 0, 200 * MiB, 400 * MiB, 300 * MiB, 0, 50 * MiB, 10 * MiB]
    records = []
    for step in range(calls):
        values = [v + (rng.randrange(-4096, 4096) if jitter else 0) for v in base]
        total = sum(values)
        records.append(
            StepRecord(step, float(step), 0.1, tuple(values), total, total, tuple(values))
        )
    assert len(base) == len(CATEGORIES)
    detector = LeakDetector(None)
    for record in records[:16]:  # fill the window
        detector.on_step(record)
    start = time.perf_counter()
    for record in records[16:]:
        detector.on_step(record)
    elapsed = time.perf_counter() - start
    assert detector.leaks == []
    return elapsed / (calls - 16)


def hunt_seconds() -> tuple[float, float, int]:
    """Seconds of one tensor census and one holder search here, and the objects tracked."""
    import gc

    import torch

    from profiler.leaks import find_holders
    from profiler.leaks.holders import tensor_refs

    kept = [torch.zeros(1024) for _ in range(8)]
    start = time.perf_counter()
    tensor_refs()
    census = time.perf_counter() - start
    start = time.perf_counter()
    holders = find_holders(kept)
    search = time.perf_counter() - start
    assert [h.name for h in holders] == ["kept"]
    return census, search, len(gc.get_objects())


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()

    step = big_ops_step_seconds(args.steps)
    steady = detector_seconds_per_step(args.calls, jitter=False)
    noisy = detector_seconds_per_step(args.calls, jitter=True)
    census, search, objects = hunt_seconds()
    print("leak detector cost (CPU)")
    print(f"  big-ops step (transformer d512 x2, seq 256, batch 8): {step * 1e3:9.1f} ms")
    print(
        f"  on_step, steady memory:       {steady * 1e6:7.1f} µs  "
        f"= {steady / step * 100:.4f}% of the big step"
    )
    print(
        f"  on_step, all series jitter:   {noisy * 1e6:7.1f} µs  "
        f"= {noisy / step * 100:.4f}% of the big step"
    )
    print(
        f"  hunt: tensor census {census * 1e3:.1f} ms per hunt step, holder search "
        f"{search * 1e3:.1f} ms at its end ({objects} objects tracked by gc here)"
    )
    worst = max(steady, noisy)
    verdict = "OK" if worst / step <= 0.01 else "OVER"
    print(f"  per-step cost / big-ops step: {worst / step * 100:.4f}% (target <= 1%): {verdict}")


if __name__ == "__main__":
    main()
