"""Scripted runs for the report, advice and waterfall tests (the fake itself is in fakes.py).

``cuda_oom_run`` is a real CUDA OOM as the tracker records it (on CPU, no device needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fakes import ScriptedTracker, session_info

from profiler.records import (
    AllocatorReading,
    Category,
    Failure,
    FailureSource,
    LiveStorage,
    Peaks,
    Phase,
    Sample,
)
from profiler.run import TrackedRun

__all__ = ["AT_FAILURE", "GiB", "SNAPSHOT", "ScriptedTracker", "cuda_oom_run", "session_info"]

GiB = 1024**3
#: At the failure: weights, gradients, optimizer state 20 GiB each, activations 10 GiB.
AT_FAILURE = (20 * GiB, 0, 20 * GiB, 20 * GiB, 10 * GiB, 0, 0, 0)
SNAPSHOT: Mapping[str, Any] = {
    "segments": [{"device": 0, "total_size": 2 * GiB, "blocks": []}],
    "device_traces": [],
}


def cuda_oom_run(session: Path) -> ScriptedTracker:
    """A fast-mode run on ``cuda:0`` that a real CUDA OOM stopped in backward (80 GiB device).

    The samples carry allocator readings (70 GiB allocated, 76 GiB reserved, 5 GiB of it split),
    the failure was seen by the allocator's OOM observer (2 GiB asked, 1 GiB free) with its
    snapshot, and the report goes into ``session``.
    """
    reading = AllocatorReading(allocated=70 * GiB, reserved=76 * GiB, inactive_split=5 * GiB)
    forward = (20 * GiB, 0, 0, 20 * GiB, 0, 0, 0, 0)
    samples = [
        Sample(100.0, 0, Phase.FORWARD, "model", forward, 40 * GiB, reading),
        Sample(101.0, 0, Phase.BACKWARD, "model.layers.3", AT_FAILURE, 70 * GiB, reading),
    ]
    activations = LiveStorage(
        4 * GiB,
        Category.ACTIVATIONS,
        "model.layers.3.mlp",
        0,
        "train.py:88",
        None,
        (8, 4096, 32768),
        "bfloat16",
    )
    return ScriptedTracker(
        info=session_info(
            device="cuda:0",
            mode="fast",
            session_dir=str(session),
            model_class="LlamaForCausalLM",
            param_count=5 * GiB,
            trainable_param_count=5 * GiB,
            optimizer_class="AdamW",
            observed_batch=8,
            observed_seq=4096,
            autocast_dtype="bfloat16",
            checkpointing=True,
            training=True,
        ),
        samples=samples,
        peaks=Peaks(70 * GiB, AT_FAILURE, AT_FAILURE, AT_FAILURE),
        failure=Failure(
            source=FailureSource.ALLOCATOR,
            sample=samples[-1],
            requested=2 * GiB,
            capacity=80 * GiB,
            free=1 * GiB,
            snapshot=SNAPSHOT,
        ),
        storages=[activations],
    )


def _conforms(session: Path) -> None:
    """Never called: mypy checks here that the scripted CUDA run is a :class:`TrackedRun`."""
    _: TrackedRun = cuda_oom_run(session)
