"""Fast mode's steady-state shortcuts give what the full computations give.

The leak detector's growth series skips its per-series test when the last points repeat one
set of values (a steady training loop); a lean step's records are built from the sample's own
values. Each is checked against the path it short-cuts.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from profiler import track_memory
from profiler.leaks.growth import GrowthSeries, GrowthTest
from profiler.records import Sample, StepRecord
from profiler.units import KiB


def _full_growing(series: GrowthSeries) -> list[tuple[str, int, int]]:
    """``growing()`` with the repeat counter cleared: every series runs the full test."""
    same = series._same
    series._same = 0
    try:
        return [(g.series, g.bytes_per_step, g.points) for g in series.growing()]
    finally:
        series._same = same


@pytest.mark.parametrize("recent", [2, 3, 4])
def test_growth_shortcut_equals_the_full_test(recent: int) -> None:
    rng = random.Random(recent)
    test = GrowthTest(window=6, warmup=1, recent=recent, min_bytes_per_step=64 * KiB)
    series = GrowthSeries(["a", "b", "total"], test)
    values = [1000, 2000, 3000]
    shortcuts = 0
    for step in range(400):
        roll = rng.random()
        if roll < 0.15:  # a leak in "a": 1 MiB a step
            values = [values[0] + 2**20, values[1], values[2] + 2**20]
        elif roll < 0.25:  # noise below the floor in "b"
            values = [values[0], values[1] + rng.randrange(-4096, 4096), values[2]]
        # else: the same values again (the steady state)
        series.add(step, list(values))  # a fresh list each time; values repeat by content
        found = [(g.series, g.bytes_per_step, g.points) for g in series.growing()]
        assert found == _full_growing(series)
        shortcuts += series._same + 1 >= min(recent, series.points)
    assert shortcuts > 100  # the shortcut was taken, and agreed each time


def test_growth_shortcut_sees_a_reused_list_change() -> None:
    # a caller that refills one list: the repeat is judged on the values, not the object
    series = GrowthSeries(["x"], GrowthTest(window=6, warmup=0, recent=3))
    row = [0]
    for step in range(8):
        row[0] = step * 2**20
        series.add(step, row)
    assert series._same == 0
    assert [g.series for g in series.growing()] == ["x"]


def test_lean_step_records_equal_their_kept_tuples() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    seen: list[object] = []

    class Collect:
        def on_sample(self, sample: Sample) -> None:
            seen.append(sample)

        def on_step(self, record: StepRecord) -> None:
            seen.append(record)

    with track_memory(model, optimizer, stream=False, leaks=False) as mem:
        mem.add_observer(Collect())
        for _ in range(4):
            model(x).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    samples = [s for s in seen if isinstance(s, Sample)]
    steps = [s for s in seen if isinstance(s, StepRecord)]
    assert len(steps) == 4
    assert steps == mem._engine.history.step_records()
    kept = mem._engine.history.sample_records()
    assert samples == kept[-len(samples) :]
    # each step's record carries its end sample's bytes and total
    for record in steps:
        end = next(s for s in samples if s.step == record.step and s.time == record.time)
        assert (record.bytes, record.total) == (end.bytes, end.total)
