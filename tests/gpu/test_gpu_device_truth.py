"""On a real CUDA device: the allocator, NVML, the waterfall, the engine and a forced OOM agree.

Every test here is marked ``gpu`` and skipped without CUDA (see ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from profiler.backends import cuda
from profiler.backends.cuda import MemoryHistory, OomObserver
from profiler.gpucheck import TOLERANCE, Kit, workloads
from profiler.waterfall import build_waterfall

pytestmark = pytest.mark.gpu

MiB = 1024**2
ROOT = Path(__file__).resolve().parents[2]


def _kit(device: torch.device) -> Kit:
    return Kit(device, tiny=False, budget=1e9)


def _workload(name: str):  # type: ignore[no-untyped-def]
    found = [w for w in workloads() if w.name == name]
    if not found:
        pytest.skip(f"{name} needs transformers")
    return found[0]


def test_allocator_reading_matches_torch(cuda_device: torch.device) -> None:
    keep = [torch.empty(n, dtype=torch.uint8, device=cuda_device) for n in (100, 3 * MiB, 30 * MiB)]
    torch.cuda.synchronize(cuda_device)
    reading = cuda.allocator_reading(cuda_device)
    assert reading is not None
    assert reading.allocated == torch.cuda.memory_allocated(cuda_device)
    assert reading.reserved == torch.cuda.memory_reserved(cuda_device)
    assert reading.peak_allocated == torch.cuda.max_memory_allocated(cuda_device)
    assert reading.num_ooms == torch.cuda.memory_stats(cuda_device)["num_ooms"]
    assert cuda.allocated_bytes(cuda_device) == reading.allocated
    flat = torch.cuda.memory_stats(cuda_device)
    assert cuda.TorchCudaApi().memory_stats(cuda_device) == {k: flat[k] for k in cuda.STAT_KEYS}
    del keep


def test_segment_map_sums_to_reserved(cuda_device: torch.device) -> None:
    keep = [torch.empty(n, dtype=torch.uint8, device=cuda_device) for n in (300, 2 * MiB, 25 * MiB)]
    torch.cuda.synchronize(cuda_device)
    segments = cuda.segment_map(cuda_device.index)
    assert sum(s.total for s in segments) == torch.cuda.memory_reserved(cuda_device)
    assert sum(s.allocated for s in segments) == torch.cuda.memory_allocated(cuda_device)
    assert all(sum(b.size for b in s.blocks) == s.total for s in segments)
    del keep


def test_device_uuid_matches_nvml(cuda_device: torch.device) -> None:
    from profiler.backends.nvml import default_source, normalize_uuid

    source = default_source()
    index = source.nvml_index(cuda_device.index)
    assert index is not None
    row = source.device(index)
    assert row is not None
    assert normalize_uuid(row.uuid) == normalize_uuid(cuda.device_uuid(cuda_device.index))


def test_nvml_finds_this_process_and_waterfall_sums(cuda_device: torch.device) -> None:
    from profiler.backends.nvml import default_source

    keep = torch.empty(256 * MiB, dtype=torch.uint8, device=cuda_device)
    torch.cuda.synchronize(cuda_device)
    memory = default_source().process_memory(cuda_device.index)
    assert memory is not None and memory.process_used is not None
    reading = cuda.allocator_reading(cuda_device)
    assert reading is not None
    assert memory.process_used >= reading.reserved
    w = build_waterfall(
        nvml_used=memory.process_used,
        reserved=reading.reserved,
        allocated=reading.allocated,
        categories=None,
    )
    assert w.outside_pytorch is not None and w.reserved is not None
    assert w.outside_pytorch + w.reserved == memory.process_used
    assert w.outside_pytorch >= 0 and w.cached_free is not None and w.cached_free >= 0
    del keep


def test_exact_mode_within_1pct_of_torch(cuda_device: torch.device) -> None:
    row = _kit(cuda_device).measure(_workload("mlp_train"), "exact")
    assert row["mode"] == "exact"
    assert abs(row["error"]) <= TOLERANCE, row
    assert row["expected_error"]["weights"] == 0.0


def test_fast_mode_within_1pct_of_torch(cuda_device: torch.device) -> None:
    row = _kit(cuda_device).measure(_workload("mlp_train"), "fast")
    assert row["mode"] == "fast"
    assert abs(row["error"]) <= TOLERANCE, row
    w = row["waterfall"]
    assert (
        w["outside_pytorch"] is None
        or w["outside_pytorch"] + w["reserved"] == w["nvml_process_used"]
    )


def test_kv_cache_matches_formula(cuda_device: torch.device) -> None:
    workload = _workload("gpt2_generate")
    for mode in ("exact", "fast"):
        row = _kit(cuda_device).measure(workload, mode)
        assert row["expected_error"]["kv_cache"] == 0.0, (mode, row["categories"]["kv_cache"])


def test_real_oom_is_captured(cuda_device: torch.device) -> None:
    result = _kit(cuda_device).forced_oom()
    assert result["raised"] is not None and "out of memory" in result["raised"].lower()
    assert result["observer_attached"] is True
    assert result["num_ooms_delta"] == 1
    total = torch.cuda.get_device_properties(cuda_device).total_memory
    assert result["observer_notice"]["requested"] >= total
    assert result["tracker_failure"] is not None
    assert result["tracker_failure"]["simulated"] is False


def test_memory_history_records_allocations(cuda_device: torch.device) -> None:
    with MemoryHistory(max_entries=1000) as history:
        block = torch.empty(5 * MiB, dtype=torch.uint8, device=cuda_device)
        snapshot = history.snapshot()
    entries = snapshot["device_traces"][cuda_device.index]
    assert any(e["action"] == "alloc" and e["size"] >= 5 * MiB for e in entries)
    del block


def test_oom_observer_hears_a_real_oom(cuda_device: torch.device) -> None:
    total = torch.cuda.get_device_properties(cuda_device).total_memory
    keep = torch.empty(64 * MiB, dtype=torch.uint8, device=cuda_device)
    with OomObserver(snapshot=True) as observer:
        assert observer.attached
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(total * 2, dtype=torch.uint8, device=cuda_device)
    assert len(observer.notices) == 1
    (snapshot,) = observer.snapshots
    assert snapshot is not None
    segments = cuda.segments_from_snapshot(snapshot, cuda_device.index)
    assert sum(s.allocated for s in segments) == torch.cuda.memory_allocated(cuda_device)
    del keep
    assert observer.notices[0].device == cuda_device.index
    assert observer.notices[0].requested >= 2 * total


_NO_INIT = """
import json, torch
from profiler.backends import cuda, nvml
from profiler.backends.cuda import OomObserver
from profiler.backends.nvml import default_source
out = {
    "reading": cuda.allocator_reading(0),
    "uuid": cuda.device_uuid(0),
    "segments": cuda.segment_map(0),
    "attached": OomObserver().attach(),
    "devices": len(default_source().devices()),
    "nvml": nvml.process_reading(0) is not None,
}
out["reading"] = out["reading"] is not None
out["initialized"] = torch.cuda.is_initialized()
print(json.dumps(out))
"""


def test_readers_never_initialise_cuda() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _NO_INIT], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["initialized"] is False
    assert (out["reading"], out["uuid"], out["segments"], out["attached"]) == (
        False,
        None,
        [],
        False,
    )
    assert out["devices"] >= 1


def test_devices_command_lists_this_gpu(cuda_device: torch.device) -> None:
    from profiler.backends.nvml import default_source
    from profiler.cli.devices import collect, render_lines

    keep = torch.empty(MiB, device=cuda_device)
    devices, processes, error = collect(default_source)
    assert error is None
    lines = render_lines(devices, processes, error)
    assert lines[0].startswith("GPU 0  ")
    assert len([line for line in lines if line.startswith("GPU ")]) == len(devices)
    del keep


def test_print_mem_shows_the_waterfall(cuda_device: torch.device) -> None:
    from profiler.tracker import track_memory

    model = torch.nn.Linear(1024, 1024, device=cuda_device)
    with track_memory(model, stream=False) as mem:
        model(torch.randn(64, 1024, device=cuda_device)).sum().backward()
    assert mem.mode == "fast"
    text = str(mem)
    assert f"waterfall ({cuda_device})" in text
    w = mem.waterfall()
    assert w.reserved is not None and w.allocated is not None
    assert w.categories["weights"] == (1024 * 1024 + 1024) * 4
    assert w.nvml_process_used is None or w.outside_pytorch + w.reserved == w.nvml_process_used
    for line in w.lines()[1:4]:
        assert line in text
