"""A real CUDA out-of-memory error inside ``track_memory`` (skipped without CUDA)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch

from profiler import SimulatedOutOfMemoryError, track_memory
from profiler.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_real_cuda_oom_writes_a_report_and_a_snapshot(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GPUMEM_HOME", str(tmp_path / "home"))
    torch.cuda.init()
    _, total = torch.cuda.mem_get_info()
    model = torch.nn.Linear(1024, 1024, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with (
            pytest.raises(torch.OutOfMemoryError) as info,
            track_memory(model, stream=False) as mem,
        ):
            torch.empty(2 * total, dtype=torch.uint8, device="cuda")
    assert not isinstance(info.value, SimulatedOutOfMemoryError)
    report = mem.oom_report
    assert report is not None and report.path is not None and report.simulated is False
    assert report.requested == pytest.approx(2 * total, rel=0.01)
    assert report.capacity == pytest.approx(total, rel=0.01)
    assert report.fragmentation is not None
    assert report.snapshot is not None
    with open(report.path.parent / report.snapshot, "rb") as handle:
        assert "segments" in pickle.load(handle)
    out = tmp_path / "viz.pickle"
    assert (
        main(["report", str(report.path), "--memory-viz", str(out), "-o", str(tmp_path / "r.md")])
        == 0
    )
    assert out.read_bytes() == (report.path.parent / report.snapshot).read_bytes()
