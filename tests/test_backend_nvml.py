"""NvmlSource over the fake bindings: lazy start, the query funnel, every error path, containers."""

from __future__ import annotations

import ctypes
import logging
import threading
import warnings

import pytest

from profiler.backends import nvml
from profiler.backends.base import DeviceInfo, DeviceSource, ProcessInfo
from profiler.backends.fake import (
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNKNOWN,
    FakeGpu,
    FakeGpuProcess,
    FakeLibraryMismatchError,
    FakeNvml,
)
from profiler.backends.nvml import NvmlLibrary, NvmlSource, normalize_uuid
from profiler.errors import BackendUnavailable
from profiler.records import NvmlReading

GiB = 1024**3
MiB = 1024**2
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ME = 4242


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(UUID0, "NVIDIA H100 80GB HBM3", 80 * GiB, 10 * GiB, 512 * MiB, 55, 61, 250_500, 0),
        FakeGpu(UUID1, "NVIDIA A100-SXM4-40GB", 40 * GiB, 3 * GiB, 0, 7, 35, 60_000, 1),
    ]


def describe(pid: int) -> tuple[str | None, str | None, str | None]:
    return (f"proc{pid}", "alice", f"python job{pid}.py")


def source(lib: FakeNvml, **kwargs: object) -> NvmlSource:
    kwargs.setdefault("pid", ME)
    kwargs.setdefault("environ", {})
    kwargs.setdefault("cuda_uuid", lambda index: None)
    kwargs.setdefault("describe", describe)
    return NvmlSource(lib, **kwargs)  # type: ignore[arg-type]


# -- lazy start and shutdown -----------------------------------------------------------------


def test_nvml_starts_lazily_once_and_restarts_after_close() -> None:
    lib = FakeNvml(two_gpus())
    src = source(lib)
    assert lib.calls["nvmlInit"] == 0
    assert src.count() == 2
    src.devices()
    assert lib.calls["nvmlInit"] == 1
    src.close()
    assert lib.calls["nvmlShutdown"] == 1 and not lib.initialized
    assert len(src.devices()) == 2
    assert lib.calls["nvmlInit"] == 2


def test_nvml_start_is_locked_across_threads() -> None:
    lib = FakeNvml(two_gpus())
    library = NvmlLibrary(lib)
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        library.ensure()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lib.calls["nvmlInit"] == 1
    assert library.started


def test_shutdown_twice_and_shutdown_error_are_quiet() -> None:
    lib = FakeNvml(two_gpus(), errors={"nvmlShutdown": NVML_ERROR_UNKNOWN})
    library = NvmlLibrary(lib)
    library.shutdown()  # never started: nothing to do
    library.ensure()
    library.shutdown()
    library.shutdown()
    assert lib.calls["nvmlShutdown"] == 1
    assert not library.started


# -- a missing library or driver: one clear error with a hint --------------------------------


@pytest.mark.parametrize(
    ("code", "message", "hint"),
    [
        (NVML_ERROR_LIBRARY_NOT_FOUND, "NVML library not available", "libnvidia-ml.so.1"),
        (NVML_ERROR_DRIVER_NOT_LOADED, "NVIDIA driver not loaded", "nvidia-smi"),
        (NVML_ERROR_NO_PERMISSION, "no permission to use NVML", "/dev/nvidia"),
        (NVML_ERROR_UNKNOWN, "NVML failed to start (Unknown Error)", None),
    ],
)
def test_start_failure_is_backend_unavailable(code: int, message: str, hint: str | None) -> None:
    lib = FakeNvml(two_gpus(), init_error=code)
    src = source(lib)
    with pytest.raises(BackendUnavailable) as info:
        src.devices()
    assert info.value.message.startswith(message)
    if hint is None:
        assert info.value.hint is None
    else:
        assert hint in info.value.hint
        assert "\nHINT: " in str(info.value)
    # remembered: the next call fails the same way without trying again
    with pytest.raises(BackendUnavailable):
        src.processes()
    assert lib.calls["nvmlInit"] == 1


def test_library_lost_mid_session_raises() -> None:
    lib = FakeNvml(two_gpus(), errors={"nvmlDeviceGetCount": NVML_ERROR_LIBRARY_NOT_FOUND})
    with pytest.raises(BackendUnavailable, match="NVML library not available"):
        source(lib).devices()


def _nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_library_present(), reason="this machine has the NVML library")
def test_real_bindings_without_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "_default", None)
    monkeypatch.setattr(nvml, "_warned_unavailable", False)
    with pytest.raises(BackendUnavailable) as info:
        nvml.default_source()
    assert info.value.message == "NVML library not available (NVML Shared Library Not Found)"
    assert "NVIDIA Container Toolkit" in info.value.hint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert nvml.process_reading(0) is None
        assert nvml.process_reading(0) is None
    # "always" also shows a ResourceWarning of earlier tests' garbage collected meanwhile
    ours = [c for c in caught if not issubclass(c.category, ResourceWarning)]
    assert len(ours) == 1, [f"{c.category.__name__}: {c.message}" for c in caught]
    assert "no NVML figures: NVML library not available" in str(ours[0].message)


# -- devices and the per-call funnel ---------------------------------------------------------


def test_devices_report_every_field() -> None:
    src = source(FakeNvml(two_gpus()))
    assert isinstance(src, DeviceSource)
    assert src.devices() == [
        DeviceInfo(0, UUID0, "NVIDIA H100 80GB HBM3", 80 * GiB, 10 * GiB,
                   80 * GiB - 10 * GiB - 512 * MiB, 55, 61, 250.5, False),
        DeviceInfo(1, UUID1, "NVIDIA A100-SXM4-40GB", 40 * GiB, 3 * GiB, 37 * GiB, 7, 35,
                   60.0, True),
    ]  # fmt: skip


def test_memory_falls_back_to_v1_where_v2_is_missing() -> None:
    # v1 "used" includes the driver's 512 MiB reserve; v2 leaves it out
    without_struct = source(FakeNvml(two_gpus(), missing={"nvmlMemory_v2"}))
    assert without_struct.devices()[0].memory_used == 10 * GiB + 512 * MiB
    for code, v2_calls in (
        (NVML_ERROR_FUNCTION_NOT_FOUND, 1),  # an old driver: v2 is asked once, then never
        (NVML_ERROR_NOT_SUPPORTED, 4),
        (NVML_ERROR_ARGUMENT_VERSION_MISMATCH, 4),
    ):
        lib = FakeNvml(two_gpus(), errors={"nvmlDeviceGetMemoryInfo_v2": code})
        src = source(lib)
        assert src.devices()[0].memory_used == 10 * GiB + 512 * MiB
        assert src.devices()[1].memory_used == 3 * GiB
        assert lib.calls["nvmlDeviceGetMemoryInfo"] == 4
        assert lib.calls["nvmlDeviceGetMemoryInfo_v2"] == v2_calls


@pytest.mark.parametrize(
    ("function", "field"),
    [
        ("nvmlDeviceGetTemperature", "temperature"),
        ("nvmlDeviceGetPowerUsage", "power_watts"),
        ("nvmlDeviceGetUtilizationRates", "utilization"),
        ("nvmlDeviceGetMigMode", "mig_mode"),
        ("nvmlDeviceGetName", "name"),
        ("nvmlDeviceGetUUID", "uuid"),
    ],
)
@pytest.mark.parametrize(
    "code",
    [
        NVML_ERROR_NOT_SUPPORTED,
        NVML_ERROR_FUNCTION_NOT_FOUND,
        NVML_ERROR_NO_PERMISSION,
        NVML_ERROR_GPU_IS_LOST,
        NVML_ERROR_UNKNOWN,
    ],
)
def test_per_call_error_becomes_none(
    function: str, field: str, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gpumem.nvml")
    src = source(FakeNvml(two_gpus(), errors={function: code}))
    first = src.devices()
    second = src.devices()
    assert [getattr(d, field) for d in first + second] == [None] * 4
    assert first[0].memory_total == 80 * GiB  # the rest of the row survives
    records = [r for r in caplog.records if r.name == "gpumem.nvml"]
    assert len(records) == 1  # logged once per function, not per call
    assert function in records[0].getMessage()


def test_memory_error_gives_none_memory() -> None:
    lib = FakeNvml(
        two_gpus(),
        errors={"nvmlDeviceGetMemoryInfo_v2": NVML_ERROR_GPU_IS_LOST,
                "nvmlDeviceGetMemoryInfo": NVML_ERROR_GPU_IS_LOST},
    )  # fmt: skip
    device = source(lib).devices()[0]
    assert (device.memory_total, device.memory_used, device.memory_free) == (None, None, None)
    assert device.temperature == 61


def test_function_missing_from_bindings_or_driver(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gpumem.nvml")
    lib = FakeNvml(
        two_gpus(),
        missing={"nvmlDeviceGetMigMode"},
        errors={"nvmlDeviceGetPowerUsage": FakeLibraryMismatchError("unversioned")},
    )
    devices = source(lib).devices()
    assert [(d.mig_mode, d.power_watts) for d in devices] == [(None, None), (None, None)]
    messages = sorted(r.getMessage() for r in caplog.records)
    assert messages == [
        "NVML nvmlDeviceGetMigMode unavailable: not in these NVML bindings",
        "NVML nvmlDeviceGetPowerUsage unavailable: the driver's NVML lacks this function",
    ]


def test_other_exceptions_are_not_swallowed() -> None:
    lib = FakeNvml(two_gpus(), errors={"nvmlDeviceGetName": KeyError("bug")})
    with pytest.raises(KeyError):
        source(lib).devices()


def test_count_failure_means_no_devices() -> None:
    lib = FakeNvml(two_gpus(), errors={"nvmlDeviceGetCount": NVML_ERROR_UNKNOWN})
    src = source(lib)
    assert src.devices() == []
    assert src.processes() == []


def test_lost_gpu_is_skipped() -> None:
    lib = FakeNvml(two_gpus(), errors={"nvmlDeviceGetHandleByIndex": NVML_ERROR_GPU_IS_LOST})
    assert source(lib).devices() == []


# -- processes ------------------------------------------------------------------------------


def test_processes_merge_compute_and_graphics_with_psutil_details() -> None:
    lib = FakeNvml(
        two_gpus(),
        [
            FakeGpuProcess(ME, 0, 6 * GiB),
            FakeGpuProcess(ME, 0, 6 * GiB, graphics=True),  # same pid in both lists: once
            FakeGpuProcess(17, 0, None),  # usedGpuMemory not available (WDDM, MIG)
            FakeGpuProcess(99, 1, 2 * GiB, graphics=True),
        ],
    )
    assert source(lib).processes() == [
        ProcessInfo(ME, 0, 6 * GiB, f"proc{ME}", "alice", f"python job{ME}.py"),
        ProcessInfo(17, 0, None, "proc17", "alice", "python job17.py"),
        ProcessInfo(99, 1, 2 * GiB, "proc99", "alice", "python job99.py"),
    ]


def test_processes_fall_back_to_versioned_functions() -> None:
    lib = FakeNvml(
        two_gpus(),
        [FakeGpuProcess(ME, 0, 6 * GiB), FakeGpuProcess(5, 1, GiB, graphics=True)],
        errors={
            "nvmlDeviceGetComputeRunningProcesses": NVML_ERROR_FUNCTION_NOT_FOUND,
            "nvmlDeviceGetGraphicsRunningProcesses": FakeLibraryMismatchError("old driver"),
        },
    )
    src = source(lib)
    procs = src.processes()
    assert [(p.pid, p.device_index, p.gpu_memory) for p in procs] == [(ME, 0, 6 * GiB), (5, 1, GiB)]
    assert src.processes() == procs
    assert lib.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 4
    # a function the driver lacks is asked once, not on every call
    assert lib.calls["nvmlDeviceGetComputeRunningProcesses"] == 1
    assert lib.calls["nvmlDeviceGetGraphicsRunningProcesses"] == 1


def test_process_list_errors_give_no_rows() -> None:
    lib = FakeNvml(
        two_gpus(),
        [FakeGpuProcess(ME, 0, 6 * GiB)],
        errors={
            name: NVML_ERROR_NO_PERMISSION
            for name in (
                "nvmlDeviceGetComputeRunningProcesses",
                "nvmlDeviceGetComputeRunningProcesses_v2",
                "nvmlDeviceGetGraphicsRunningProcesses",
                "nvmlDeviceGetGraphicsRunningProcesses_v2",
            )
        },
    )
    assert source(lib).processes() == []


def test_describe_by_psutil_for_this_process() -> None:
    import os

    lib = FakeNvml(two_gpus(), [FakeGpuProcess(os.getpid(), 0, GiB)])
    (proc,) = NvmlSource(lib).processes()
    assert proc.pid == os.getpid()
    assert proc.name is not None and proc.name.startswith("python")
    assert proc.command is not None and "python" in proc.command


# -- this process: by pid, by UUID, by CUDA_VISIBLE_DEVICES, in a container ------------------


def test_process_reading_by_pid() -> None:
    lib = FakeNvml(two_gpus(), [FakeGpuProcess(ME, 0, 6 * GiB), FakeGpuProcess(7, 0, 2 * GiB)])
    src = source(lib, cuda_uuid=lambda i: UUID0[4:])
    memory = src.process_memory(0)
    assert memory is not None
    assert (memory.how, memory.estimated, memory.uuid) == ("pid", False, UUID0)
    assert src.process_reading(0) == NvmlReading(6 * GiB, 10 * GiB, 80 * GiB, 0)


def test_cuda_ordinal_found_by_torch_uuid() -> None:
    # CUDA_VISIBLE_DEVICES=1: CUDA's device 0 is NVML's device 1; torch reports the bare UUID
    lib = FakeNvml(two_gpus(), [FakeGpuProcess(ME, 1, 3 * GiB)])
    src = source(lib, cuda_uuid=lambda i: {0: UUID1[4:]}.get(i))
    assert src.nvml_index(0) == 1
    assert src.process_reading(0) == NvmlReading(3 * GiB, 3 * GiB, 40 * GiB, 1)
    # cached: later readings do not ask NVML for UUIDs again
    uuid_calls = lib.calls["nvmlDeviceGetUUID"]
    src.process_reading(0)
    assert lib.calls["nvmlDeviceGetUUID"] == uuid_calls


@pytest.mark.parametrize(
    ("visible", "ordinal", "expected"),
    [
        ("1", 0, 1),
        ("1,0", 1, 0),
        (UUID1, 0, 1),
        ("GPU-aaaaaaaa", 0, 1),  # CUDA accepts a unique UUID prefix
        ("GPU-ffff", 0, None),
        ("0", 1, None),
        ("", 0, None),  # empty: CUDA sees no device
        ("1,-1,0", 1, None),  # CUDA stops at the first invalid entry
    ],
)
def test_cuda_ordinal_found_by_visible_devices(
    visible: str, ordinal: int, expected: int | None
) -> None:
    src = source(FakeNvml(two_gpus()), environ={"CUDA_VISIBLE_DEVICES": visible})
    assert src.nvml_index(ordinal) == expected


def test_ordinal_beyond_devices_has_no_reading() -> None:
    src = source(FakeNvml(two_gpus()))
    assert src.nvml_index(1) == 1  # no CUDA_VISIBLE_DEVICES: the ordinal is the NVML index
    assert src.nvml_index(2) is None
    assert src.process_reading(2) is None


def test_container_single_process_row_is_ours() -> None:
    # in a pid namespace NVML reports the host pid 31337, not ours
    lib = FakeNvml(two_gpus(), [FakeGpuProcess(31337, 0, 7 * GiB)])
    src = source(lib, cuda_uuid=lambda i: UUID0)
    memory = src.process_memory(0)
    assert memory is not None
    assert (memory.how, memory.estimated, memory.process_used) == ("only-process", True, 7 * GiB)
    assert memory.reading() == NvmlReading(7 * GiB, 10 * GiB, 80 * GiB, 0)


def test_container_several_rows_uses_device_memory() -> None:
    lib = FakeNvml(two_gpus(), [FakeGpuProcess(31337, 0, 7 * GiB), FakeGpuProcess(31338, 0, GiB)])
    src = source(lib, cuda_uuid=lambda i: UUID0)
    memory = src.process_memory(0)
    assert memory is not None
    assert (memory.how, memory.process_used, memory.uuid) == ("device", 10 * GiB, UUID0)


def test_container_empty_process_list_uses_device_memory() -> None:
    lib = FakeNvml(two_gpus(), [])
    src = source(lib, cuda_uuid=lambda i: UUID1)
    assert src.process_reading(0) == NvmlReading(3 * GiB, 3 * GiB, 40 * GiB, 1)


def test_not_on_the_device_before_cuda_starts() -> None:
    lib = FakeNvml(two_gpus(), [FakeGpuProcess(31337, 0, 7 * GiB)])
    memory = source(lib).process_memory(0)  # cuda_uuid None: CUDA not initialised here
    assert memory is not None
    assert (memory.how, memory.process_used, memory.estimated) == ("none", None, False)
    assert memory.reading() == NvmlReading(None, 10 * GiB, 80 * GiB, 0)


def test_own_row_without_figure() -> None:
    lib = FakeNvml(two_gpus(), [FakeGpuProcess(ME, 0, None)])
    memory = source(lib, cuda_uuid=lambda i: UUID0).process_memory(0)
    assert memory is not None and (memory.how, memory.process_used) == ("none", None)


def test_reading_follows_scripted_change() -> None:
    lib = FakeNvml(two_gpus(), [FakeGpuProcess(ME, 0, GiB)])
    src = source(lib, cuda_uuid=lambda i: UUID0)
    assert src.process_reading(0) == NvmlReading(GiB, 10 * GiB, 80 * GiB, 0)
    lib.processes[0].used = 5 * GiB
    lib.gpus[0].memory_used = 14 * GiB
    assert src.process_reading(0) == NvmlReading(5 * GiB, 14 * GiB, 80 * GiB, 0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("GPU-ABCD-12", "abcd-12"),
        (b"MIG-abcd", "abcd"),
        ("abcd-12", "abcd-12"),
        (None, None),
        ("GPU-", None),
    ],
)
def test_normalize_uuid(raw: object, expected: str | None) -> None:
    assert normalize_uuid(raw) == expected
