"""The CUDA allocator readers over a scripted allocator, and the real ones without CUDA."""

from __future__ import annotations

import pytest
import torch

from profiler.backends import cuda
from profiler.backends.cuda import (
    Block,
    HostAllocatorReading,
    MemoryHistory,
    OomNotice,
    OomObserver,
    Segment,
)
from profiler.backends.fake import FakeAllocator, fake_memory_stats, fake_snapshot
from profiler.errors import BackendUnavailable
from profiler.records import AllocatorReading

MiB = 1024**2


@pytest.mark.parametrize(
    ("nbytes", "charged"), [(0, 0), (-5, 0), (1, 512), (512, 512), (513, 1024), (4000, 4096)]
)
def test_round_size(nbytes: int, charged: int) -> None:
    assert cuda.round_size(nbytes) == charged


def test_reading_from_scripted_stats() -> None:
    stats = fake_memory_stats(
        allocated=300 * MiB,
        reserved=512 * MiB,
        active=310 * MiB,
        inactive_split=12 * MiB,
        peak_allocated=400 * MiB,
        num_alloc_retries=2,
        num_ooms=1,
    )
    api = FakeAllocator(stats=stats)
    assert cuda.allocator_reading(0, api=api) == AllocatorReading(
        allocated=300 * MiB,
        reserved=512 * MiB,
        active=310 * MiB,
        inactive_split=12 * MiB,
        peak_allocated=400 * MiB,
        num_alloc_retries=2,
        num_ooms=1,
    )
    assert cuda.allocated_bytes(0, api=api) == 300 * MiB
    assert cuda.is_initialized(api) is True


def test_pick_stats_from_torch_nested_dict() -> None:
    def pools(current: int, peak: int) -> dict[str, dict[str, int]]:
        metrics = {"current": current, "peak": peak, "allocated": 9 * current, "freed": 1}
        return {"all": metrics, "small_pool": {}, "large_pool": {}}

    nested = {
        "allocated_bytes": pools(300, 400),
        "reserved_bytes": pools(512, 600),
        "active_bytes": pools(310, 410),
        "inactive_split_bytes": pools(12, 20),
        "segment": pools(3, 4),
        "num_alloc_retries": 2,
        "num_ooms": 1,
        "oversize_allocations": {"current": 0},
    }
    picked = cuda.pick_stats(nested)
    assert picked == {
        "allocated_bytes.all.current": 300,
        "allocated_bytes.all.peak": 400,
        "reserved_bytes.all.current": 512,
        "active_bytes.all.current": 310,
        "inactive_split_bytes.all.current": 12,
        "num_alloc_retries": 2,
        "num_ooms": 1,
    }
    assert cuda.reading_from_stats(picked) == AllocatorReading(300, 512, 310, 12, 400, 2, 1)
    assert cuda.pick_stats({}) == {}
    assert cuda.pick_stats({"allocated_bytes": {"all": {}}, "num_ooms": 0}) == {"num_ooms": 0}


def test_stats_without_optional_keys() -> None:
    stats = {"allocated_bytes.all.current": 1024, "reserved_bytes.all.current": 2 * MiB}
    assert cuda.reading_from_stats(stats) == AllocatorReading(1024, 2 * MiB)
    assert cuda.reading_from_stats({}) is None


def test_readers_never_touch_an_uninitialised_allocator() -> None:
    api = FakeAllocator(stats=fake_memory_stats(allocated=1, reserved=1), initialized=False)
    assert cuda.allocator_reading(0, api=api) is None
    assert cuda.allocated_bytes(0, api=api) == 0
    assert cuda.segment_map(api=api) == []
    assert cuda.device_uuid(0, api=api) is None
    assert cuda.host_allocator_reading(api=api) is None
    assert api.stats_calls == 0


def test_scripted_stats_advance_per_call() -> None:
    api = FakeAllocator(
        stats=[fake_memory_stats(allocated=a, reserved=2 * MiB) for a in (512, 1024, 4096)]
    )
    assert [cuda.allocated_bytes(api=api) for _ in range(4)] == [512, 1024, 4096, 4096]


def test_real_torch_without_cuda_reads_nothing() -> None:
    if torch.cuda.is_initialized():
        pytest.skip("CUDA is initialised in this process")
    assert cuda.allocator_reading(0) is None
    assert cuda.allocated_bytes(0) == 0
    assert cuda.segment_map() == []
    assert cuda.device_uuid(0) is None
    assert cuda.host_allocator_reading() is None
    assert not torch.cuda.is_initialized()


def test_segment_map_from_snapshot() -> None:
    snapshot = fake_snapshot(
        [
            (0x7000_0000, 7, [(2 * MiB, "active_allocated"), (6 * MiB, "inactive"),
                              (MiB, "active_awaiting_free"), (3 * MiB, "inactive")]),
            (0x1000_0000, 0, [(1024, "active_allocated"), (512, "inactive")]),
        ]
    )  # fmt: skip
    segments = cuda.segment_map(0, api=FakeAllocator(snapshot=snapshot))
    assert [s.address for s in segments] == [0x1000_0000, 0x7000_0000]  # sorted by address
    small, large = segments
    assert small == Segment(
        device=0,
        address=0x1000_0000,
        total=1536,
        allocated=1024,
        active=1024,
        pool="small",
        stream=0,
        blocks=(
            Block(0x1000_0000, 1024, 1024, "active_allocated"),
            Block(0x1000_0000 + 1024, 512, 512, "inactive"),
        ),
    )
    assert (large.total, large.allocated, large.active) == (12 * MiB, 2 * MiB, 3 * MiB)
    assert (large.free, large.largest_free_block, large.pool, large.stream) == (
        10 * MiB,
        6 * MiB,
        "large",
        7,
    )
    assert large.blocks[2] == Block(0x7000_0000 + 8 * MiB, MiB, MiB, "active_awaiting_free")


def test_segments_filtered_by_device() -> None:
    snap0 = fake_snapshot([(0x1000, 0, [(MiB, "inactive")])], device=0)
    snap1 = fake_snapshot([(0x2000, 0, [(2 * MiB, "inactive")])], device=1)
    both = {"segments": snap0["segments"] + snap1["segments"]}
    assert [s.total for s in cuda.segments_from_snapshot(both, 1)] == [2 * MiB]
    assert [s.device for s in cuda.segments_from_snapshot(both)] == [0, 1]
    assert cuda.segments_from_snapshot({}) == []


def test_snapshot_unavailable_in_this_build() -> None:
    if hasattr(torch._C, "_cuda_memorySnapshot"):
        pytest.skip("this torch build has the snapshot hook")
    with pytest.raises(BackendUnavailable, match="no CUDA memory snapshot"):
        cuda.TorchCudaApi().memory_snapshot()


def test_memory_history_switches_on_and_off() -> None:
    api = FakeAllocator(snapshot=fake_snapshot([]))
    with MemoryHistory(max_entries=1000, api=api) as history:
        assert history.active
        assert history.snapshot() == {"segments": [], "device_traces": [[]]}
    assert api.history == [("all", 1000), (None, 1000)]
    assert not history.active


def test_memory_history_unavailable() -> None:
    api = FakeAllocator(has_history=False)
    with (
        pytest.raises(BackendUnavailable, match="cannot record CUDA memory history"),
        MemoryHistory(api=api),
    ):
        pass
    assert api.history == []


def test_real_history_unavailable_without_cuda_build() -> None:
    if cuda.TorchCudaApi().has_history:
        pytest.skip("this torch build records history")
    with pytest.raises(BackendUnavailable) as info:
        MemoryHistory().__enter__()
    assert "HINT: use a CUDA build of torch" in str(info.value)


def test_oom_observer_hears_each_oom_and_detaches() -> None:
    api = FakeAllocator()
    heard: list[OomNotice] = []
    first = OomObserver(heard.append, api=api)
    second = OomObserver(api=api)
    assert first.attach() and second.attach() and first.attach()
    assert len(api.observers) == 1  # one dispatcher per allocator, however many observers
    api.fire_oom(0, 4 * MiB, 78 * 1024 * MiB, 3 * MiB)
    notice = OomNotice(
        device=0, requested=4 * MiB, device_total=78 * 1024 * MiB, device_free=3 * MiB
    )
    assert heard == [notice]
    assert first.notices == [notice] and second.notices == [notice]
    first.detach()
    api.fire_oom(1, MiB, 0, 0)
    assert first.notices == [notice]
    assert second.notices == [notice, OomNotice(1, MiB, 0, 0)]
    second.detach()


def test_oom_observer_waits_for_cuda_and_survives_a_failing_callback() -> None:
    api = FakeAllocator(initialized=False)

    def broken(notice: OomNotice) -> None:
        raise RuntimeError("bug in the callback")

    with OomObserver(broken, api=api) as observer:
        assert not observer.attached  # CUDA not initialised: nothing to attach to yet
        api.initialized = True
        assert observer.attach()
        api.fire_oom(0, 512, 0, 0)  # the allocator must not see the callback's exception
        assert observer.notices == [OomNotice(0, 512, 0, 0)]
    assert not observer.attached


def test_oom_observer_keeps_the_snapshot_of_the_failure() -> None:
    snapshot = fake_snapshot([(0x1000, 0, [(20 * MiB, "active_allocated"), (2 * MiB, "inactive")])])
    api = FakeAllocator(snapshot=snapshot)
    with OomObserver(snapshot=True, api=api) as observer:
        api.fire_oom(0, 4 * MiB, 22 * MiB, 0)
        api.snapshot = None
        api.fire_oom(0, 8 * MiB, 22 * MiB, 0)
    assert observer.snapshots == [snapshot, {"segments": []}]
    plain = OomObserver(api=api)
    with plain:
        api.fire_oom(0, MiB, 0, 0)
    assert plain.snapshots == [] and len(plain.notices) == 1


def test_oom_observer_snapshot_failure_is_none() -> None:
    class Broken(FakeAllocator):
        def memory_snapshot(self) -> dict[str, object]:
            raise RuntimeError("no snapshot")

    api = Broken()
    with OomObserver(snapshot=True, api=api) as observer:
        api.fire_oom(0, MiB, 0, 0)
    assert observer.snapshots == [None]
    assert observer.notices == [OomNotice(0, MiB, 0, 0)]


def test_oom_observer_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="no CUDA out-of-memory observer"):
        OomObserver(api=FakeAllocator(has_oom_observer=False)).attach()


def test_device_uuid_and_host_allocator() -> None:
    api = FakeAllocator(
        uuids={0: "11111111-2222-3333-4444-555555555555"},
        host_stats={
            "allocated_bytes.current": 64 * MiB,
            "active_bytes.current": 16 * MiB,
            "allocated_bytes.peak": 96 * MiB,
        },
    )
    assert cuda.device_uuid(0, api=api) == "11111111-2222-3333-4444-555555555555"
    assert cuda.device_uuid(3, api=api) is None
    assert cuda.host_allocator_reading(api=api) == HostAllocatorReading(
        64 * MiB, 16 * MiB, 96 * MiB
    )
    assert cuda.host_allocator_reading(api=FakeAllocator()) is None


def _dotted(node: object) -> str | None:
    import ast

    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def test_one_module_per_hardware_binding() -> None:
    """Only nvml.py imports pynvml; only cuda.py touches CUDA's private torch hooks."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pynvml_users, cuda_private_users = set(), set()
    for path in [*root.glob("profiler/**/*.py"), *root.glob("tui/**/*.py")]:
        name = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=name)):
            if isinstance(node, ast.Import) and any(a.name == "pynvml" for a in node.names):
                pynvml_users.add(name)
            if isinstance(node, ast.ImportFrom) and node.module == "pynvml":
                pynvml_users.add(name)
            dotted = _dotted(node) if isinstance(node, ast.Attribute) else None
            if dotted and (
                dotted.startswith("torch._C._cuda") or dotted.startswith("torch.cuda.memory._")
            ):
                cuda_private_users.add(name)
    assert pynvml_users == {"profiler/backends/nvml.py"}
    assert cuda_private_users == {"profiler/backends/cuda.py"}


def test_importing_the_backends_loads_no_bindings() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "import profiler.backends.nvml, profiler.backends.fake, profiler.backends.cuda\n"
        "from profiler.backends.nvml import NvmlSource\n"
        "NvmlSource()\n"
        "print(sorted(m for m in ('psutil', 'textual', 'pandas') if m in sys.modules))\n"
        "nvml = sys.modules.get('pynvml')  # torch.cuda imports it, but nobody started NVML\n"
        "print(0 if nvml is None else nvml._nvmlLib_refcount)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "0"]


def test_current_device_index_without_cuda() -> None:
    assert cuda.current_device_index(api=FakeAllocator(initialized=False)) == 0
