"""The real-CUDA branch of the OOM report, driven on CPU by a scripted run (``fakes_report``).

A run on ``cuda:0`` whose samples carry allocator readings, with a failure as the tracker
records it from a real CUDA OOM (not simulated) and an allocator snapshot taken by the OOM
observer: the report shows fragmentation, the waterfall from the allocator, the advice accounts
for memory outside the tracked tensors, and ``gpumem report --memory-viz`` hands back the
snapshot. When the failure was seen inside the allocator (no allocator reading in its sample),
the figures at the failure come from the snapshot taken there.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path

import torch
from fakes_report import AT_FAILURE, SNAPSHOT, GiB, cuda_oom_run

from profiler.advice import facts_from_run, rank
from profiler.cli import main
from profiler.records import AllocatorReading, Phase, Sample
from profiler.report.build import MAX_TIMELINE_POINTS, build_report
from profiler.report.reporter import handle_oom


def test_advice_counts_memory_outside_the_tensors(tmp_path: Path):
    facts = facts_from_run(cuda_oom_run(tmp_path))
    # outside the tracked 70 GiB: 80 - 1 free - 70 = 9 GiB (context, cache, others)
    assert (facts.capacity, facts.overhead) == (80 * GiB, 9 * GiB)
    assert (facts.cached_free, facts.fragmented) == (6 * GiB, True)  # 2 GiB asked, 6 GiB cached
    by_kind = {s.kind: s for s in rank(facts)}
    allocator = by_kind["allocator"]
    # now: 72 GiB tracked with the request; after: 72 + 9 - 6 = 75 GiB <= 80
    # not replayable: an estimate, which never says it fits
    assert (allocator.saves_bytes, allocator.fits, allocator.peak_after) == (
        6 * GiB,
        None,
        75 * GiB,
    )
    # batch: 60 GiB fixed, 12 GiB grows with a batch of 8, 71 GiB usable -> 7
    assert by_kind["batch_size"].params["batch_size"] == 7
    assert "checkpointing" not in by_kind and "precision" not in by_kind  # both already on


def test_report_from_a_real_cuda_oom(tmp_path: Path, capsys):
    run = cuda_oom_run(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = handle_oom(
            run, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        )
    assert report is not None and report.path == tmp_path / "oom_report.json"
    assert [str(w.message) for w in caught if "report written" in str(w.message)] == [
        f"gpumem: out of memory; report written to {tmp_path / 'oom_report.html'} (top fix: "
        "Fine-tune with QLoRA: 4-bit base weights plus LoRA adapters, saves 56.85 GiB)"
    ]
    assert report.simulated is False
    assert (report.capacity, report.requested, report.free) == (80 * GiB, 2 * GiB, 1 * GiB)
    frag = report.fragmentation
    assert frag is not None
    assert (frag.reserved, frag.allocated, frag.cached_free, frag.inactive_split) == (
        76 * GiB,
        70 * GiB,
        6 * GiB,
        5 * GiB,
    )
    labels = [(r.label, r.bytes, r.level) for r in report.waterfall]
    assert labels[:2] == [("device capacity", 80 * GiB, 0), ("free", 1 * GiB, 1)]
    assert ("PyTorch reserved", 76 * GiB, 2) in labels
    assert ("cached but free", 6 * GiB, 3) in labels
    assert ("activations", 10 * GiB, 4) in labels
    assert report.tensors[0].shape == (8, 4096, 32768)
    assert report.snapshot == "oom_report.snapshot.pickle"
    with open(tmp_path / report.snapshot, "rb") as handle:
        assert pickle.load(handle) == SNAPSHOT
    # 5G parameters: worth fine-tuning with adapters; QLoRA drops 17.25 GiB of weights and 99%
    # of the 40 GiB of gradients and optimizer state
    assert [s.kind for s in report.suggestions][:3] == ["lora", "lora", "offload"]
    assert run.events[0].data["suggestion"]["kind"] == "lora"

    out = tmp_path / "viz.pickle"
    assert (
        main(["report", str(tmp_path), "--memory-viz", str(out), "-o", str(tmp_path / "r.md")]) == 0
    )
    with open(out, "rb") as handle:
        assert pickle.load(handle) == SNAPSHOT
    text = (tmp_path / "r.md").read_text()
    assert "# gpumem OOM report: CUDA out of memory" in text
    assert (
        "| allocator | Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True | 6.00 GiB "
        "| 75.00 GiB | estimated |" in text
    )


def test_long_timelines_are_thinned_keeping_the_peak_and_the_end(tmp_path: Path):
    run = cuda_oom_run(tmp_path)
    totals = [(k * 7919) % 1000 for k in range(5000)]
    totals[1234] = 5000  # the peak
    reading = AllocatorReading(allocated=0, reserved=0)
    run.samples = [
        Sample(float(k), k // 10, Phase.FORWARD, None, (0, 0, 0, 0, v, 0, 0, 0), v, reading)
        for k, v in enumerate(totals)
    ]
    run.failure = dataclasses.replace(run.failure, sample=run.samples[-1])
    report = build_report(run, None)
    times = [p.time for p in report.timeline]
    assert len(times) == MAX_TIMELINE_POINTS
    assert times == sorted(times)
    assert 1234.0 in times and times[-1] == 4999.0
    assert max(p.total for p in report.timeline) == 5000


def test_a_failure_seen_inside_the_allocator_is_read_from_its_snapshot(tmp_path: Path):
    # The OOM observer runs inside the allocator: its sample has no allocator reading, and the
    # block's final sample (after torch unwound) shows less allocated. The snapshot taken at the
    # failure says what was there: two segments, 72 GiB reserved, 69 GiB allocated.
    run = cuda_oom_run(tmp_path)
    at_failure = dataclasses.replace(run.samples[-1], allocator=None)
    after = AllocatorReading(allocated=60 * GiB, reserved=76 * GiB)
    run.samples = [
        run.samples[0],
        at_failure,
        Sample(102.0, 0, Phase.BACKWARD, None, AT_FAILURE, 70 * GiB, after),
    ]
    snapshot = {
        "segments": [
            {
                "device": 0,
                "total_size": 40 * GiB,
                "allocated_size": 38 * GiB,
                "blocks": [
                    {"size": 38 * GiB, "state": "active_allocated"},
                    {"size": 2 * GiB, "state": "inactive"},
                ],
            },
            {
                "device": 0,
                "total_size": 32 * GiB,
                "allocated_size": 31 * GiB,
                "blocks": [
                    {"size": 31 * GiB, "state": "active_allocated"},
                    {"size": 1 * GiB, "state": "inactive"},
                ],
            },
            {"device": 1, "total_size": 8 * GiB, "allocated_size": 0, "blocks": []},
        ]
    }
    assert run.failure is not None
    run.failure = dataclasses.replace(run.failure, sample=at_failure, snapshot=snapshot)
    report = build_report(run, None)
    frag = report.fragmentation
    assert frag is not None
    assert (frag.reserved, frag.allocated, frag.cached_free) == (72 * GiB, 69 * GiB, 3 * GiB)
    assert (frag.segments, frag.largest_free_block, frag.inactive_split) == (2, 2 * GiB, None)
    labels = [(r.label, r.bytes) for r in report.waterfall]
    assert ("PyTorch reserved", 72 * GiB) in labels and ("allocated", 69 * GiB) in labels
    # 3 GiB cached but free at the failure, more than the 2 GiB asked: fragmentation's doing
    facts = facts_from_run(run)
    assert (facts.cached_free, facts.fragmented) == (3 * GiB, True)
