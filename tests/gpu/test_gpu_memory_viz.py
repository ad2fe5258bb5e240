"""history=True on a real CUDA device: the snapshot memory_viz opens, with the block's events."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from profiler import track_memory

pytestmark = pytest.mark.gpu


def test_real_history_holds_the_blocks_allocations(cuda_device: torch.device, tmp_path: Path):
    model = torch.nn.Linear(256, 256, device=cuda_device)
    with track_memory(model, history=10_000, stream=False) as mem:
        model(torch.randn(64, 256, device=cuda_device)).sum().backward()
    snapshot = pickle.loads(mem.export_memory_viz(tmp_path / "viz.pickle").read_bytes())
    traces = snapshot["device_traces"][cuda_device.index]
    sizes = {event["size"] for event in traces if event["action"] == "alloc"}
    assert 64 * 256 * 4 in sizes  # the forward's output, as the allocator saw it
    assert snapshot["segments"]
