"""The growth statistics behind the leak detector: exact slopes, trends and verdicts."""

from __future__ import annotations

import pytest

from profiler.errors import UsageError
from profiler.leaks.growth import GrowthSeries, GrowthTest, mann_kendall_tau, theil_sen_slope
from profiler.units import KiB, MiB


def test_theil_sen_is_the_median_pairwise_slope() -> None:
    # pairs: (0,1)=10, (0,2)=10, (1,2)=10 → 10
    assert theil_sen_slope([0, 1, 2], [0, 10, 20]) == 10.0
    # one outlier cannot move it: slopes 1,1,1,1,1,1 and the spike's four
    assert theil_sen_slope([0, 1, 2, 3, 4], [0, 1, 100, 3, 4]) == 1.0


def test_theil_sen_even_count_averages_the_middle_pair() -> None:
    # slopes (0,0)-(1,1) = 1 and (0,0)-(1,2) = 2; the pair with equal x is skipped
    assert theil_sen_slope([0, 1, 1], [0, 1, 2]) == 1.5


def test_theil_sen_of_fewer_than_two_points_is_zero() -> None:
    assert theil_sen_slope([5], [100]) == 0.0
    assert theil_sen_slope([], []) == 0.0


def test_mann_kendall_tau_counts_pairs() -> None:
    assert mann_kendall_tau([1, 2, 3, 4]) == 1.0
    assert mann_kendall_tau([4, 3, 2, 1]) == -1.0
    assert mann_kendall_tau([5, 5, 5]) == 0.0
    # pairs: (1,3)+ (1,2)+ (3,2)- → (2 - 1) / 3
    assert mann_kendall_tau([1, 3, 2]) == pytest.approx(1 / 3)


def _series(values: list[int], **kwargs: int) -> GrowthSeries:
    series = GrowthSeries(["x"], GrowthTest(**kwargs))
    for step, value in enumerate(values):
        series.add(step, [value])
    return series


def test_steady_leak_is_growing_with_its_exact_rate() -> None:
    values = [100 * MiB + step * 512 * KiB for step in range(8)]
    est = _series(values).estimate("x")
    assert est is not None
    assert est.growing
    assert est.bytes_per_step == 512 * KiB
    assert est.recent_bytes_per_step == 512 * KiB
    assert est.tau == 1.0
    # warm-up (steps 0 and 1) excluded, window of the last 6
    assert (est.first_step, est.last_step, est.points) == (2, 7, 6)
    assert est.current == values[-1]


def test_warmup_steps_never_enter_the_window() -> None:
    # a huge jump in steps 0-1 (optimizer state), then flat: nothing grows
    series = _series([0, 500 * MiB, 800 * MiB, 800 * MiB, 800 * MiB, 800 * MiB])
    assert series.points == 4
    est = series.estimate("x")
    assert est is not None and not est.growing and est.bytes_per_step == 0


def test_below_the_noise_floor_is_not_growing() -> None:
    values = [10 * MiB + step * 32 * KiB for step in range(10)]
    est = _series(values).estimate("x")
    assert est is not None
    assert est.bytes_per_step == 32 * KiB
    assert not est.growing


def test_noise_up_and_down_is_not_growing() -> None:
    values = [10 * MiB + (1 if step % 2 else -1) * MiB for step in range(12)]
    est = _series(values).estimate("x")
    assert est is not None
    assert not est.growing
    # window L H L H L H: 9 pairs up, 6 down → tau 3/15, well under 0.6
    assert est.tau == pytest.approx(0.2)


def test_plateau_clears_once_flat_for_recent_steps() -> None:
    # grows 1 MiB a step through step 6, then flat
    values = [min(step, 6) * MiB for step in range(12)]
    verdicts = []
    series = GrowthSeries(["x"], GrowthTest())
    for step, value in enumerate(values):
        series.add(step, [value])
        est = series.estimate("x")
        verdicts.append(None if est is None else est.growing)
    # steps 0,1 warm-up; 2,3 too few points; growing at 4..7, cleared from 8 (steps 6,7,8 flat)
    assert verdicts == [None, None, None, None, True, True, True, True, False, False, False, False]


def test_leak_every_other_step_is_still_growing() -> None:
    values = [(step // 2) * MiB for step in range(10)]
    est = _series(values).estimate("x")
    assert est is not None
    assert est.growing
    assert est.bytes_per_step == MiB // 2


def test_one_spike_does_not_make_a_leak() -> None:
    values = [10 * MiB] * 12
    values[9] = 50 * MiB
    est = _series(values).estimate("x")
    assert est is not None and not est.growing and est.bytes_per_step == 0


def test_growing_lists_fastest_first_and_skips_flat_series() -> None:
    series = GrowthSeries(["a", "b", "c"], GrowthTest())
    for step in range(8):
        series.add(step, [step * MiB, 7 * MiB, step * 2 * MiB])
    assert [e.series for e in series.growing()] == ["c", "a"]
    assert [e.bytes_per_step for e in series.growing()] == [2 * MiB, MiB]


def test_invalid_thresholds_are_refused() -> None:
    with pytest.raises(UsageError):
        GrowthTest(window=2)
    with pytest.raises(UsageError):
        GrowthTest(window=4, recent=5)


def test_growing_agrees_with_the_full_test_on_random_series() -> None:
    import random

    rng = random.Random(1)
    verdicts = set()
    for recent in (2, 3, 4):
        test = GrowthTest(window=6, recent=recent)
        for _ in range(300):
            series = GrowthSeries(["x"], test)
            value = 0
            for step in range(10):
                value += rng.choice([-MiB, 0, 0, 64 * KiB, MiB, 2 * MiB])
                series.add(step, [value])
            est = series.estimate("x")
            assert est is not None
            assert [e.series for e in series.growing()] == (["x"] if est.growing else [])
            verdicts.add((recent, est.growing))
    # both verdicts occur for every setting, so the shortcut is exercised both ways
    assert verdicts == {(r, g) for r in (2, 3, 4) for g in (True, False)}
