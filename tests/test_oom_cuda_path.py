"""The real-CUDA branch of the OOM report, driven on CPU by a scripted tracker.

A tracker on ``cuda:0`` whose samples carry allocator readings, with a failure as the tracker
records it from a real CUDA OOM (not simulated) and an allocator snapshot taken by the OOM
observer: the report shows fragmentation, the waterfall from the allocator, the advice accounts
for memory outside the tracked tensors, and ``gpumem report --memory-viz`` hands back the
snapshot.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from profiler.advice import facts_from_tracker, rank
from profiler.cli import main
from profiler.ledger import LiveStorage
from profiler.oom import handle_oom
from profiler.records import (
    AllocatorReading,
    Category,
    Failure,
    FailureSource,
    Phase,
    Sample,
    StepRecord,
)

GiB = 1024**3
#: At the failure: weights, gradients, optimizer state 20 GiB each, activations 10 GiB.
AT_FAILURE = (20 * GiB, 0, 20 * GiB, 20 * GiB, 10 * GiB, 0, 0, 0)
SNAPSHOT = {"segments": [{"device": 0, "total_size": 2 * GiB, "blocks": []}], "device_traces": []}


class ScriptedTracker:
    """Just what the report and the advice read from a tracker."""

    def __init__(self, session: Path) -> None:
        self.device = torch.device("cuda", 0)
        self.mode = "fast"
        self.capacity = None
        self.gpu_name = None
        self.session_dir = session
        self.pid = 1234
        self.model = None
        self.model_class = "LlamaForCausalLM"
        self.param_count = 5 * 1024**3
        self.trainable_param_count = 5 * 1024**3
        self.optimizer_class = "AdamW"
        self.observed_batch = 8
        self.observed_seq = 4096
        self.autocast_dtype = torch.bfloat16
        self.checkpointing = True
        self.predicted = dict.fromkeys(Category)
        reading = AllocatorReading(allocated=70 * GiB, reserved=76 * GiB, inactive_split=5 * GiB)
        self.samples = [
            Sample(
                100.0,
                0,
                Phase.FORWARD,
                "model",
                (20 * GiB, 0, 0, 20 * GiB, 0, 0, 0, 0),
                40 * GiB,
                reading,
            ),
            Sample(101.0, 0, Phase.BACKWARD, "model.layers.3", AT_FAILURE, 70 * GiB, reading),
        ]
        self.steps: list[StepRecord] = []
        self.ledger = SimpleNamespace(
            current=list(AT_FAILURE),
            at_peak=list(AT_FAILURE),
            category_peak=list(AT_FAILURE),
            peak=70 * GiB,
            live_storages=lambda: [
                LiveStorage(
                    4 * GiB,
                    Category.ACTIVATIONS,
                    "model.layers.3.mlp",
                    0,
                    "train.py:88",
                    None,
                    (8, 4096, 32768),
                    "bfloat16",
                ),
            ],
        )
        self.failure = Failure(
            source=FailureSource.ALLOCATOR,
            sample=self.samples[-1],
            requested=2 * GiB,
            capacity=80 * GiB,
            free=1 * GiB,
            snapshot=SNAPSHOT,
        )
        self.events: list = []

    def emit(self, event) -> None:
        self.events.append(event)

    def waterfall(self):
        from profiler.waterfall import waterfall

        return waterfall(self)


def test_advice_counts_memory_outside_the_tensors(tmp_path: Path):
    facts = facts_from_tracker(ScriptedTracker(tmp_path))
    # outside the tracked 70 GiB: 80 - 1 free - 70 = 9 GiB (context, cache, others)
    assert (facts.capacity, facts.overhead) == (80 * GiB, 9 * GiB)
    assert (facts.cached_free, facts.fragmented) == (6 * GiB, True)  # 2 GiB asked, 6 GiB cached
    by_kind = {s.kind: s for s in rank(facts)}
    allocator = by_kind["allocator"]
    # now: 72 GiB tracked with the request; after: 72 + 9 - 6 = 75 GiB <= 80
    assert (allocator.saves_bytes, allocator.fits, allocator.peak_after) == (
        6 * GiB,
        True,
        75 * GiB,
    )
    # batch: 60 GiB fixed, 12 GiB grows with a batch of 8, 71 GiB usable -> 7
    assert by_kind["batch_size"].params["batch_size"] == 7
    assert "checkpointing" not in by_kind and "precision" not in by_kind  # both already on


def test_report_from_a_real_cuda_oom(tmp_path: Path, capsys):
    tracker = ScriptedTracker(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = handle_oom(
            tracker, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
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
    assert tracker.events[0].data["suggestion"]["kind"] == "lora"

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
        "| 75.00 GiB | yes |" in text
    )


def test_long_timelines_are_thinned_keeping_the_peak_and_the_end(tmp_path: Path):
    from profiler.oom import MAX_TIMELINE_POINTS, build_report

    tracker = ScriptedTracker(tmp_path)
    totals = [(k * 7919) % 1000 for k in range(5000)]
    totals[1234] = 5000  # the peak
    reading = AllocatorReading(allocated=0, reserved=0)
    tracker.samples = [
        Sample(float(k), k // 10, Phase.FORWARD, None, (0, 0, 0, 0, v, 0, 0, 0), v, reading)
        for k, v in enumerate(totals)
    ]
    tracker.failure = dataclasses.replace(tracker.failure, sample=tracker.samples[-1])
    report = build_report(tracker, None)
    times = [p.time for p in report.timeline]
    assert len(times) == MAX_TIMELINE_POINTS
    assert times == sorted(times)
    assert 1234.0 in times and times[-1] == 4999.0
    assert max(p.total for p in report.timeline) == 5000
