"""Scripted stand-ins for every device source: for tests, demos and machines without a GPU.

Swap the backend instead of monkeypatching (the httpx ``MockTransport`` pattern):

- :class:`FakeNvml` is a pynvml-shaped object (same function names, same error codes) that
  :class:`profiler.backends.nvml.NvmlSource` accepts as ``lib=``, so the real NVML code paths
  (lazy start, the query funnel, error handling, the container lookup) run against it.
- :class:`FakeSource` speaks :class:`~profiler.backends.base.DeviceSource` directly (the dashboard).
- :class:`FakeAllocator` is a CUDA-allocator-shaped object that the readers in
  :mod:`profiler.backends.cuda` accept as ``api=``: scripted ``memory_stats`` dicts, a memory
  snapshot, memory-history recording and an out-of-memory observer that a test can fire.

Nothing here imports torch, pynvml or psutil.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from profiler.backends.base import DeviceInfo, ProcessInfo
from profiler.records import NvmlReading

__all__ = [
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
    "NVML_ERROR_DRIVER_NOT_LOADED",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
    "NVML_ERROR_GPU_IS_LOST",
    "NVML_ERROR_LIBRARY_NOT_FOUND",
    "NVML_ERROR_NOT_FOUND",
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_UNINITIALIZED",
    "NVML_ERROR_UNKNOWN",
    "FakeAllocator",
    "FakeGpu",
    "FakeGpuProcess",
    "FakeLibraryMismatchError",
    "FakeNVMLError",
    "FakeNvml",
    "FakeSource",
    "demo_source",
    "fake_memory_stats",
    "fake_snapshot",
]

# The NVML return codes (fixed by the NVML C API, identical in pynvml).
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_UNKNOWN = 999

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "Argument version mismatch",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class FakeLibraryMismatchError(Exception):
    """The fake's ``NVMLLibraryMismatchError``: pynvml raises it from an unversioned function
    that the driver's NVML lacks."""


class FakeNVMLError(Exception):
    """The fake's ``NVMLError``: carries the NVML return code in ``value`` like pynvml's."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


@dataclass(slots=True)
class FakeGpu:
    """One scripted GPU. ``memory_used`` is NVML v2's "used" (without the driver's reserve)."""

    uuid: str
    name: str = "NVIDIA Fake GPU 80GB"
    memory_total: int = 80 * 1024**3
    memory_used: int = 0
    memory_reserved: int = 0  # driver/firmware reserve: v1 "used" includes it, v2 does not
    utilization: int | None = 0
    temperature: int | None = 40
    power_milliwatts: int | None = 70_000
    mig_mode: int | None = 0


@dataclass(slots=True)
class FakeGpuProcess:
    """One scripted process on a GPU (``gpu`` is the NVML index); ``used`` None = not reported."""

    pid: int
    gpu: int
    used: int | None
    graphics: bool = False


@dataclass(slots=True)
class _FakeHandle:
    index: int


class FakeNvml:
    """A pynvml-shaped object with scripted GPUs, processes and errors.

    Args:
        gpus: the GPUs in NVML index order (mutate ``self.gpus`` between calls to script change).
        processes: the processes on them (``self.processes``, mutable too).
        errors: NVML function name → what every call of it raises: an NVML error code, or an
            exception (e.g. ``FakeLibraryMismatchError``).
        init_error: an NVML error code that ``nvmlInit`` raises (12: the library is missing).
        missing: function names these "bindings" lack (old nvidia-ml-py), including
            ``"nvmlMemory_v2"`` for bindings without the v2 memory struct.

    ``calls`` counts the calls per function name; ``initialized`` says whether NVML is started.
    """

    NVMLError = FakeNVMLError
    NVMLLibraryMismatchError = FakeLibraryMismatchError
    NVML_TEMPERATURE_GPU = 0
    nvmlMemory_v2 = 0x02000028

    def __init__(
        self,
        gpus: Iterable[FakeGpu] = (),
        processes: Iterable[FakeGpuProcess] = (),
        *,
        errors: Mapping[str, int | BaseException] | None = None,
        init_error: int | None = None,
        missing: Iterable[str] = (),
    ) -> None:
        self.gpus = list(gpus)
        self.processes = list(processes)
        self.errors = dict(errors or {})
        self.init_error = init_error
        self.missing = frozenset(missing)
        self.calls: Counter[str] = Counter()
        self.initialized = False

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "missing"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    # -- plumbing ---------------------------------------------------------------------------
    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if not self.initialized:
            raise FakeNVMLError(NVML_ERROR_UNINITIALIZED)
        error = self.errors.get(name)
        if isinstance(error, BaseException):
            raise error
        if error is not None:
            raise FakeNVMLError(error)

    def _gpu(self, handle: _FakeHandle) -> FakeGpu:
        if handle.index >= len(self.gpus):
            raise FakeNVMLError(NVML_ERROR_GPU_IS_LOST)
        return self.gpus[handle.index]

    def _procs(self, handle: _FakeHandle, *, graphics: bool) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(
                pid=p.pid, usedGpuMemory=p.used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0
            )
            for p in self.processes
            if p.gpu == handle.index and p.graphics == graphics
        ]

    # -- the pynvml functions gpumem uses ----------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._enter("nvmlShutdown")
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _FakeHandle:  # noqa: N802
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise FakeNVMLError(NVML_ERROR_NOT_FOUND)
        return _FakeHandle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _FakeHandle:  # noqa: N802
        self._enter("nvmlDeviceGetHandleByUUID")
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == text:
                return _FakeHandle(index)
        raise FakeNVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: _FakeHandle) -> str:  # noqa: N802
        self._enter("nvmlDeviceGetUUID")
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: _FakeHandle) -> str:  # noqa: N802
        self._enter("nvmlDeviceGetName")
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(  # noqa: N802
        self, handle: _FakeHandle, version: int | None = None
    ) -> SimpleNamespace:
        self._enter("nvmlDeviceGetMemoryInfo" if not version else "nvmlDeviceGetMemoryInfo_v2")
        gpu = self._gpu(handle)
        free = gpu.memory_total - gpu.memory_used - gpu.memory_reserved
        if not version:  # v1: "used" includes the driver's reserve
            return SimpleNamespace(
                total=gpu.memory_total, free=free, used=gpu.memory_used + gpu.memory_reserved
            )
        return SimpleNamespace(
            version=version,
            total=gpu.memory_total,
            reserved=gpu.memory_reserved,
            free=free,
            used=gpu.memory_used,
        )

    def nvmlDeviceGetUtilizationRates(self, handle: _FakeHandle) -> SimpleNamespace:  # noqa: N802
        self._enter("nvmlDeviceGetUtilizationRates")
        gpu = self._gpu(handle)
        if gpu.utilization is None:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetTemperature(self, handle: _FakeHandle, sensor: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetTemperature")
        gpu = self._gpu(handle)
        if gpu.temperature is None:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, handle: _FakeHandle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetPowerUsage")
        gpu = self._gpu(handle)
        if gpu.power_milliwatts is None:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.power_milliwatts

    def nvmlDeviceGetMigMode(self, handle: _FakeHandle) -> list[int]:  # noqa: N802
        self._enter("nvmlDeviceGetMigMode")
        gpu = self._gpu(handle)
        if gpu.mig_mode is None:
            raise FakeNVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetComputeRunningProcesses(  # noqa: N802
        self, handle: _FakeHandle
    ) -> list[SimpleNamespace]:
        self._enter("nvmlDeviceGetComputeRunningProcesses")
        return self._procs(handle, graphics=False)

    def nvmlDeviceGetComputeRunningProcesses_v2(  # noqa: N802
        self, handle: _FakeHandle
    ) -> list[SimpleNamespace]:
        self._enter("nvmlDeviceGetComputeRunningProcesses_v2")
        return self._procs(handle, graphics=False)

    def nvmlDeviceGetGraphicsRunningProcesses(  # noqa: N802
        self, handle: _FakeHandle
    ) -> list[SimpleNamespace]:
        self._enter("nvmlDeviceGetGraphicsRunningProcesses")
        return self._procs(handle, graphics=True)

    def nvmlDeviceGetGraphicsRunningProcesses_v2(  # noqa: N802
        self, handle: _FakeHandle
    ) -> list[SimpleNamespace]:
        self._enter("nvmlDeviceGetGraphicsRunningProcesses_v2")
        return self._procs(handle, graphics=True)


class FakeSource:
    """A :class:`~profiler.backends.base.DeviceSource` with scripted answers.

    Args:
        devices: what :meth:`devices` returns (``self.device_list``; replace it to script change).
        processes: what :meth:`processes` returns (``self.process_list``).
        errors: method name (``"devices"``, ``"processes"``, ``"process_reading"``) → the
            exception that every call of it raises.
        pid: the pid :meth:`process_reading` treats as "this process".
    """

    def __init__(
        self,
        devices: Sequence[DeviceInfo] = (),
        processes: Sequence[ProcessInfo] = (),
        *,
        errors: Mapping[str, BaseException] | None = None,
        pid: int | None = None,
    ) -> None:
        self.device_list = list(devices)
        self.process_list = list(processes)
        self.errors = dict(errors or {})
        self.pid = pid
        self.calls: Counter[str] = Counter()

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        error = self.errors.get(name)
        if error is not None:
            raise error

    def devices(self) -> list[DeviceInfo]:
        """The scripted devices."""
        self._enter("devices")
        return list(self.device_list)

    def processes(self) -> list[ProcessInfo]:
        """The scripted processes."""
        self._enter("processes")
        return list(self.process_list)

    def process_reading(self, device_index: int | None = None) -> NvmlReading | None:
        """NVML's figures for ``pid`` on ``device_index`` (default 0), from the scripted rows."""
        self._enter("process_reading")
        index = 0 if device_index is None else device_index
        device = next((d for d in self.device_list if d.index == index), None)
        if device is None:
            return None
        used = [
            p.gpu_memory
            for p in self.process_list
            if p.pid == self.pid and p.device_index == index and p.gpu_memory is not None
        ]
        return NvmlReading(
            process_used=sum(used) if used else None,
            device_used=device.memory_used,
            device_total=device.memory_total,
            device_index=index,
        )


def demo_source(pid: int = 4242) -> FakeSource:
    """A two-GPU machine for demos: a training job on GPU 0, a notebook and a server on GPU 1."""
    gib = 1024**3
    devices = [
        DeviceInfo(0, "GPU-0a1b2c3d-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3",
                   80 * gib, 31 * gib, 49 * gib, 97, 64, 612.5, False),
        DeviceInfo(1, "GPU-0a1b2c3d-0000-0000-0000-000000000001", "NVIDIA H100 80GB HBM3",
                   80 * gib, 12 * gib, 68 * gib, 3, 38, 88.0, False),
    ]  # fmt: skip
    processes = [
        ProcessInfo(pid, 0, 30 * gib, "python", "alice", "python train.py --bf16"),
        ProcessInfo(pid + 1, 1, 4 * gib, "python", "bob", "jupyter-lab"),
        ProcessInfo(pid + 2, 1, 8 * gib, "vllm", "carol", "vllm serve llama-8b"),
    ]
    return FakeSource(devices, processes, pid=pid)


def fake_memory_stats(
    *,
    allocated: int,
    reserved: int,
    active: int | None = None,
    inactive_split: int = 0,
    peak_allocated: int | None = None,
    num_alloc_retries: int = 0,
    num_ooms: int = 0,
) -> dict[str, int]:
    """A ``torch.cuda.memory_stats()``-shaped dict with the keys gpumem reads."""
    return {
        "allocated_bytes.all.current": allocated,
        "allocated_bytes.all.peak": allocated if peak_allocated is None else peak_allocated,
        "reserved_bytes.all.current": reserved,
        "active_bytes.all.current": allocated if active is None else active,
        "inactive_split_bytes.all.current": inactive_split,
        "num_alloc_retries": num_alloc_retries,
        "num_ooms": num_ooms,
    }


def fake_snapshot(
    segments: Iterable[tuple[int, int, Sequence[tuple[int, str]]]], *, device: int = 0
) -> dict[str, Any]:
    """A ``torch.cuda.memory._snapshot()``-shaped dict.

    Args:
        segments: each item is ``(address, stream, [(size, state), ...])``; the blocks are
            laid out back to back and the segment's size is their sum. ``state`` is
            ``"active_allocated"``, ``"active_awaiting_free"`` or ``"inactive"``.
        device: the device every segment is on.
    """
    out = []
    for address, stream, blocks in segments:
        total = sum(size for size, _ in blocks)
        block_dicts = []
        offset = address
        for size, state in blocks:
            block_dicts.append(
                {"address": offset, "size": size, "requested_size": size, "state": state}
            )
            offset += size
        allocated = sum(size for size, state in blocks if state == "active_allocated")
        active = sum(size for size, state in blocks if state != "inactive")
        out.append(
            {
                "device": device,
                "address": address,
                "total_size": total,
                "allocated_size": allocated,
                "active_size": active,
                "requested_size": allocated,
                "stream": stream,
                "segment_type": "large" if total > 1024**2 else "small",
                "segment_pool_id": (0, 0),
                "is_expandable": False,
                "blocks": block_dicts,
            }
        )
    return {"segments": out, "device_traces": [[]]}


@dataclass(slots=True)
class FakeAllocator:
    """A CUDA-allocator-shaped object for :mod:`profiler.backends.cuda` (``api=``).

    Args:
        stats: the ``memory_stats()`` dict, or a list of them returned one per call (the last
            one repeats).
        snapshot: the ``_snapshot()`` dict.
        initialized: whether "CUDA" is initialised.
        has_history: ``False`` models a torch build without memory-history recording.
        has_oom_observer: ``False`` models a torch build without the OOM observer hook.
        host_stats: the ``host_memory_stats()`` dict (pinned host memory), or None.
        uuids: the UUID torch would report per device index.

    ``history`` records each ``record_memory_history`` call; :meth:`fire_oom` calls the attached
    observers the way the caching allocator does when an allocation fails.
    """

    stats: dict[str, int] | list[dict[str, int]] = field(default_factory=dict)
    snapshot: dict[str, Any] | None = None
    initialized: bool = True
    has_history: bool = True
    has_oom_observer: bool = True
    host_stats: dict[str, int] | None = None
    uuids: dict[int, str] = field(default_factory=dict)
    history: list[tuple[str | None, int]] = field(default_factory=list)
    observers: list[Callable[[int, int, int, int], None]] = field(default_factory=list)
    stats_calls: int = 0

    def is_initialized(self) -> bool:
        """Whether "CUDA" is initialised."""
        return self.initialized

    def memory_stats(self, device: object = None) -> dict[str, int]:
        """The scripted statistics (one list entry per call)."""
        self.stats_calls += 1
        if isinstance(self.stats, list):
            return self.stats[min(self.stats_calls, len(self.stats)) - 1]
        return self.stats

    def memory_snapshot(self) -> dict[str, Any]:
        """The scripted snapshot."""
        return self.snapshot if self.snapshot is not None else {"segments": []}

    def record_memory_history(self, enabled: str | None, max_entries: int) -> None:
        """Note a recording switch (the caller checked :attr:`has_history`)."""
        self.history.append((enabled, max_entries))

    def attach_oom_observer(self, callback: Callable[[int, int, int, int], None]) -> None:
        """Attach an observer (the caller checked :attr:`has_oom_observer`)."""
        self.observers.append(callback)

    def host_memory_stats(self) -> dict[str, int] | None:
        """The scripted pinned-host-memory statistics."""
        return self.host_stats

    def device_uuid(self, index: int) -> str | None:
        """The scripted UUID of device ``index``."""
        return self.uuids.get(index)

    def fire_oom(self, device: int, requested: int, device_total: int, device_free: int) -> None:
        """Call every attached observer, as the allocator does before raising OutOfMemoryError."""
        for callback in list(self.observers):
            callback(device, requested, device_total, device_free)
