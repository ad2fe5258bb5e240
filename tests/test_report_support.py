"""Builders shared by the report tests: a synthetic OOM report with known figures (no tests here)."""

from __future__ import annotations

from profiler.advice import Suggestion
from profiler.records import CATEGORIES
from profiler.report.model import (
    CategoryRow,
    Fragmentation,
    OomReport,
    ProcessRow,
    RunInfo,
    TensorRow,
    TimelinePoint,
    WaterfallRow,
)

MiB = 1024**2

#: Bytes per category at the failure, in CATEGORIES order.
AT_FAILURE = (40 * MiB, 0, 40 * MiB, 80 * MiB, 600 * MiB, 0, 16 * MiB, 1 * MiB)


def make_report(**overrides: object) -> OomReport:
    """A report of a simulated 1 GiB device that failed asking for 64 MiB in backward."""
    breakdown = tuple(
        CategoryRow(
            category=str(c),
            current=AT_FAILURE[i],
            peak=AT_FAILURE[i] + (8 * MiB if str(c) == "temporaries" else 0),
            at_peak=AT_FAILURE[i],
            predicted={"weights": 40 * MiB, "gradients": 40 * MiB, "optimizer": 80 * MiB}.get(
                str(c)
            ),
            gap="matches" if str(c) in ("weights", "gradients", "optimizer") else None,
        )
        for i, c in enumerate(CATEGORIES)
    )
    timeline = tuple(
        TimelinePoint(
            time=1000.0 + 0.5 * k,
            step=k // 4,
            phase=("forward", "backward", "optimizer", "idle")[k % 4],
            bytes=tuple(v * (k + 1) // 8 for v in AT_FAILURE),
            total=sum(v * (k + 1) // 8 for v in AT_FAILURE),
        )
        for k in range(8)
    )
    fields: dict[str, object] = dict(
        created=1_800_000_000.0,
        simulated=True,
        message="Simulated device out of memory. Tried to allocate 64.00 MiB",
        device="cpu",
        gpu_name=None,
        capacity=1024 * MiB,
        requested=64 * MiB,
        free=1024 * MiB - sum(AT_FAILURE),
        total=sum(AT_FAILURE),
        phase="backward",
        step=1,
        module="blocks.3.fc2",
        peak=sum(AT_FAILURE),
        run=RunInfo(
            model_class="Net",
            param_count=10_485_760,
            trainable_param_count=10_485_760,
            optimizer_class="AdamW",
            batch=64,
            mode="exact",
        ),
        categories=tuple(str(c) for c in CATEGORIES),
        breakdown=breakdown,
        waterfall=(
            WaterfallRow("simulated capacity", 1024 * MiB, 0),
            WaterfallRow("free", 1024 * MiB - sum(AT_FAILURE), 1),
            WaterfallRow("tracked tensors", sum(AT_FAILURE), 1),
            WaterfallRow("activations", 600 * MiB, 2),
        ),
        tensors=(
            TensorRow(
                64 * MiB,
                "activations",
                "blocks.3.fc1",
                1,
                "train.py:42",
                (64, 1024, 256),
                "float32",
            ),
            TensorRow(4 * MiB, "weights", "blocks.0.fc1", 0, None, None, None),
        ),
        fragmentation=None,
        processes=None,
        timeline=timeline,
        suggestions=(
            Suggestion(
                kind="batch_size",
                title="Reduce the batch size from 64 to 56 (the largest that fits)",
                saves_bytes=75 * MiB,
                fits=True,
                params={"batch_size": 56, "accumulation_steps": 2},
                detail="Activations take 9.38 MiB per sample.",
                peak_after=702 * MiB,
            ),
            Suggestion(
                kind="offload",
                title="Offload the optimizer state to the CPU",
                saves_bytes=80 * MiB,
                fits=True,
                params={"target": "cpu"},
                peak_after=697 * MiB,
            ),
        ),
        notes=("a note <with> markup & ampersand",),
    )
    fields.update(overrides)
    return OomReport(**fields)  # type: ignore[arg-type]


def make_cuda_report() -> OomReport:
    """The same failure on a real GPU, with fragmentation and another process."""
    return make_report(
        simulated=False,
        device="cuda:0",
        gpu_name="RTX 4090",
        fragmentation=Fragmentation(
            reserved=900 * MiB,
            allocated=777 * MiB,
            inactive_split=100 * MiB,
            largest_free_block=20 * MiB,
            segments=12,
        ),
        processes=(ProcessRow(pid=4242, gpu_memory=512 * MiB, name="python"),),
        snapshot="oom_report.snapshot.pickle",
    )
