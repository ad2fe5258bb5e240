"""The waterfall: exact arithmetic, its text, what does not add up, and reading it off a run."""

from __future__ import annotations

import warnings

import pytest
import torch
from fakes_report import ScriptedTracker, session_info

from profiler.records import (
    CATEGORIES,
    AllocatorReading,
    Category,
    Failure,
    FailureSource,
    NvmlReading,
    Phase,
    Sample,
)
from profiler.waterfall import Waterfall, build_waterfall, waterfall, waterfall_at_failure

MiB = 1024**2


def test_each_level_is_the_sum_of_the_next() -> None:
    w = build_waterfall(
        nvml_used=1000 * MiB,
        reserved=600 * MiB,
        allocated=450 * MiB,
        categories={"weights": 200 * MiB, Category.ACTIVATIONS: 150 * MiB, "optimizer": 96 * MiB},
        device="cuda:0",
        inactive_split=20 * MiB,
    )
    assert w.outside_pytorch == 400 * MiB
    assert w.cached_free == 150 * MiB
    assert w.unattributed == 4 * MiB
    assert w.categories_total == 446 * MiB
    assert list(w.categories) == list(CATEGORIES)
    assert w.categories[Category.GRADIENTS] == 0
    assert w.outside_pytorch + w.reserved == w.nvml_process_used
    assert w.cached_free + w.allocated == w.reserved
    assert w.categories_total + w.unattributed == w.allocated
    assert w.problems() == []


def test_text_rendering() -> None:
    w = build_waterfall(
        nvml_used=1000 * MiB,
        reserved=600 * MiB,
        allocated=450 * MiB,
        categories={"weights": 200 * MiB, "activations": 150 * MiB, "optimizer": 96 * MiB},
        device="cuda:0",
        inactive_split=20 * MiB,
    )
    assert w.lines() == [
        "waterfall (cuda:0)",
        "NVML: used by this process          1000.00 MiB",
        "├─ CUDA context + outside PyTorch    400.00 MiB",
        "└─ PyTorch reserved                  600.00 MiB",
        "   ├─ cached but free                150.00 MiB",
        "   │  └─ of which fragmented          20.00 MiB",
        "   └─ allocated                      450.00 MiB",
        "      ├─ weights                     200.00 MiB",
        "      ├─ optimizer                    96.00 MiB",
        "      ├─ activations                 150.00 MiB",
        "      └─ not attributed                4.00 MiB",
    ]
    assert str(w) == "\n".join(w.lines())


def test_categories_as_sequence_in_fixed_order() -> None:
    values = [8 * MiB, 0, 8 * MiB, 16 * MiB, 4 * MiB, 0, 1 * MiB, 0]
    w = build_waterfall(nvml_used=None, reserved=40 * MiB, allocated=37 * MiB, categories=values)
    assert w.categories == dict(zip(CATEGORIES, values, strict=True))
    assert (w.nvml_process_used, w.outside_pytorch) == (None, None)
    assert (w.cached_free, w.unattributed) == (3 * MiB, 0)
    assert w.lines()[1:3] == [
        f"{'NVML: used by this process':<35}{'-':>12}",
        f"{'├─ CUDA context + outside PyTorch':<35}{'-':>12}",
    ]
    with pytest.raises(ValueError, match="expected 8 category values, got 2"):
        build_waterfall(nvml_used=None, reserved=None, allocated=None, categories=[1, 2])


def test_missing_sources_give_none() -> None:
    w = build_waterfall(nvml_used=None, reserved=None, allocated=None, categories=None)
    assert w == Waterfall(None, None, None, None, None, None, {}, None, None)
    assert w.as_dict() == {
        "device": None,
        "nvml_process_used": None,
        "outside_pytorch": None,
        "reserved": None,
        "cached_free": None,
        "inactive_split": None,
        "allocated": None,
        "categories": {},
        "unattributed": None,
    }
    assert w.problems() == []


def test_problems_when_readings_disagree() -> None:
    w = build_waterfall(
        nvml_used=500 * MiB,
        reserved=600 * MiB,
        allocated=700 * MiB,
        categories={"weights": 800 * MiB},
    )
    assert (w.outside_pytorch, w.cached_free, w.unattributed) == (
        -100 * MiB,
        -100 * MiB,
        -100 * MiB,
    )
    assert [p.split(":")[0] for p in w.problems()] == [
        "NVML reports less than PyTorch reserved",
        "allocated exceeds reserved",
        "the engine's categories exceed allocated",
    ]


def _sample(
    step: int, split: list[int], allocator: AllocatorReading | None, nvml: NvmlReading | None
) -> Sample:
    return Sample(
        time=float(step),
        step=step,
        phase=Phase.IDLE,
        module=None,
        bytes=tuple(split),
        total=sum(split),
        allocator=allocator,
        nvml=nvml,
    )


def test_from_a_run_uses_last_sample_with_allocator_and_latest_nvml() -> None:
    split_a = [100 * MiB, 0, 0, 0, 50 * MiB, 0, 0, 0]
    split_b = [100 * MiB, 0, 100 * MiB, 200 * MiB, 0, 0, 2 * MiB, 0]
    samples = [
        _sample(
            0, split_a, AllocatorReading(150 * MiB, 160 * MiB), NvmlReading(700 * MiB, 1, 2, 0)
        ),
        _sample(1, split_b, AllocatorReading(402 * MiB, 512 * MiB, inactive_split=6 * MiB), None),
        _sample(2, split_a, None, None),  # a sample without readings is skipped
    ]
    run = ScriptedTracker(info=session_info(device="cuda:0"), samples=samples)
    w = waterfall(run)
    assert w.device == "cuda:0"
    assert w.nvml_process_used == 700 * MiB
    assert w.outside_pytorch == 188 * MiB
    assert (w.reserved, w.cached_free, w.allocated) == (512 * MiB, 110 * MiB, 402 * MiB)
    assert w.inactive_split == 6 * MiB
    assert w.categories[Category.OPTIMIZER] == 200 * MiB
    assert w.unattributed == 0


def test_from_a_cpu_run_has_categories_only() -> None:
    split = [64, 0, 0, 0, 32, 0, 0, 0]
    run = ScriptedTracker(samples=[_sample(0, split, None, None)])
    w = waterfall(run)
    assert (w.device, w.reserved, w.allocated, w.nvml_process_used) == ("cpu", None, None, None)
    assert w.categories[Category.WEIGHTS] == 64 and w.categories_total == 96


def test_from_a_cuda_run_without_readings_reads_live_and_never_starts_cuda() -> None:
    run = ScriptedTracker(info=session_info(device="cuda:0"))
    started = torch.cuda.is_initialized()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no NVML here: one degraded-mode warning
        w = waterfall(run)
    assert torch.cuda.is_initialized() == started
    if not started:
        assert (w.reserved, w.allocated, w.categories) == (None, None, {})


def test_at_the_failure_uses_its_own_sample_then_the_snapshot() -> None:
    before = [100 * MiB, 0, 0, 0, 50 * MiB, 0, 0, 0]
    at = [100 * MiB, 0, 0, 0, 300 * MiB, 0, 0, 0]
    after = [100 * MiB, 0, 0, 0, 0, 0, 0, 0]
    failing = _sample(1, at, AllocatorReading(400 * MiB, 512 * MiB), None)
    samples = [
        _sample(0, before, AllocatorReading(150 * MiB, 160 * MiB), NvmlReading(700 * MiB, 1, 2)),
        failing,
        _sample(2, after, AllocatorReading(100 * MiB, 512 * MiB), None),  # after the unwinding
    ]
    failure = Failure(FailureSource.ALLOCATOR, failing, 200 * MiB, 1024 * MiB, 100 * MiB)
    run = ScriptedTracker(info=session_info(device="cuda:0"), samples=samples, failure=failure)
    w = waterfall_at_failure(run)
    assert (w.allocated, w.reserved, w.nvml_process_used) == (400 * MiB, 512 * MiB, 700 * MiB)
    assert w.categories[Category.ACTIVATIONS] == 300 * MiB and w.unattributed == 0
    assert waterfall(run).allocated == 100 * MiB  # the latest, as ``mem.waterfall()`` shows
    # seen inside the allocator: no reading in the failure's sample, the snapshot's figures
    blind = _sample(1, at, None, None)
    snapshot = {"segments": [{"device": 0, "total_size": 500 * MiB, "allocated_size": 400 * MiB}]}
    run.failure = Failure(FailureSource.ALLOCATOR, blind, 200 * MiB, None, None, snapshot=snapshot)
    w = waterfall_at_failure(run)
    assert (w.allocated, w.reserved, w.cached_free) == (400 * MiB, 500 * MiB, 100 * MiB)
    # and without a snapshot, the latest reading recorded
    run.failure = Failure(FailureSource.ALLOCATOR, blind, 200 * MiB, None, None)
    assert (waterfall_at_failure(run).allocated, waterfall_at_failure(run).reserved) == (
        100 * MiB,
        512 * MiB,
    )


def test_real_tracker_on_cpu() -> None:
    from profiler.tracker import track_memory

    model = torch.nn.Linear(16, 8)
    with track_memory(model, mode="exact", stream=False) as mem:
        model(torch.ones(4, 16)).sum().backward()
    w = mem.waterfall()
    assert isinstance(w, Waterfall)
    assert w.device == "cpu"
    assert w.reserved is None and w.nvml_process_used is None
    assert w.categories[Category.WEIGHTS] == (16 * 8 + 8) * 4
