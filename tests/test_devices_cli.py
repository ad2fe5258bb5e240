"""``gpumem devices``: text and JSON, with a GPU (fakes) and without one (this machine)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from profiler.backends.base import DeviceInfo, ProcessInfo
from profiler.backends.fake import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    FakeGpu,
    FakeGpuProcess,
    FakeNvml,
    FakeSource,
)
from profiler.backends.nvml import NvmlSource
from profiler.cli import main
from profiler.cli.devices import collect, render_lines, to_json
from profiler.errors import BackendUnavailable

GiB = 1024**3
ROOT = Path(__file__).resolve().parent.parent
NO_LIBRARY = (
    "NVML library not available (NVML Shared Library Not Found) (hint: install the NVIDIA driver "
    "(it ships libnvidia-ml.so.1); in a container, start it with the NVIDIA Container Toolkit "
    "(docker run --gpus all))"
)


def _has_nvml() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


without_nvml = pytest.mark.skipif(_has_nvml(), reason="this machine has the NVML library")

H100 = DeviceInfo(
    0, "GPU-aa", "NVIDIA H100 80GB HBM3", 80 * GiB, 20 * GiB, 60 * GiB, 91, 70, 650.4, False
)
A10 = DeviceInfo(1, "GPU-bb", "NVIDIA A10", 24 * GiB, 0, 24 * GiB, None, None, None, None)
PROCS = [
    ProcessInfo(11, 0, 4 * GiB, "python", "bob", "python eval.py"),
    ProcessInfo(10, 0, 15 * GiB, "python", "alice", "python train.py --lr 3e-4"),
    ProcessInfo(12, 0, None, "Xorg", None, None),
]  # fmt: skip


@without_nvml
def test_no_gpu_prints_one_line_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == 0
    out, err = capsys.readouterr()
    assert out == f"no NVIDIA GPU found: {NO_LIBRARY}\n"
    assert err == ""


@without_nvml
def test_no_gpu_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"devices": [], "error": NO_LIBRARY}


@without_nvml
def test_no_gpu_in_a_fresh_process() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "profiler.cli", "devices"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"no NVIDIA GPU found: {NO_LIBRARY}\n",
        "",
    )


def test_text_one_line_per_gpu_with_its_processes() -> None:
    assert render_lines(*collect(FakeSource([H100, A10], PROCS))) == [
        "GPU 0  NVIDIA H100 80GB HBM3  20.00 GiB / 80.00 GiB used  util 91%  70°C  650 W  MIG off"
        "  GPU-aa",
        "    pid 10         15.00 GiB  alice      python train.py --lr 3e-4",
        "    pid 11          4.00 GiB  bob        python eval.py",
        "    pid 12                 -  ?          Xorg",
        "GPU 1  NVIDIA A10  0 B / 24.00 GiB used  util -  -  -  MIG -  GPU-bb",
        "    no processes",
    ]  # fmt: skip


def test_json_nests_processes_under_devices() -> None:
    report = to_json(*collect(FakeSource([H100, A10], PROCS[:1])))
    assert report == {
        "devices": [
            {
                "index": 0,
                "uuid": "GPU-aa",
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total": 80 * GiB,
                "memory_used": 20 * GiB,
                "memory_free": 60 * GiB,
                "utilization": 91,
                "temperature": 70,
                "power_watts": 650.4,
                "mig_mode": False,
                "processes": [
                    {"pid": 11, "gpu_memory": 4 * GiB, "name": "python", "user": "bob",
                     "command": "python eval.py"}
                ],
            },
            {
                "index": 1,
                "uuid": "GPU-bb",
                "name": "NVIDIA A10",
                "memory_total": 24 * GiB,
                "memory_used": 0,
                "memory_free": 24 * GiB,
                "utilization": None,
                "temperature": None,
                "power_watts": None,
                "mig_mode": None,
                "processes": [],
            },
        ],
        "error": None,
    }  # fmt: skip
    json.dumps(report)


def test_source_errors_become_one_line() -> None:
    unavailable = BackendUnavailable("NVML library not available (x)", hint="install it")
    no_devices = FakeSource(errors={"devices": unavailable})
    assert render_lines(*collect(no_devices)) == [
        "no NVIDIA GPU found: NVML library not available (x) (hint: install it)"
    ]
    assert render_lines(*collect(FakeSource([]))) == ["no NVIDIA GPU found: NVML sees no GPU"]
    no_processes = FakeSource([A10], errors={"processes": BackendUnavailable("lost")})
    assert render_lines(*collect(no_processes))[-2:] == [
        "    no processes",
        "processes unavailable: lost",
    ]


def test_factory_that_raises() -> None:
    def factory() -> FakeSource:
        raise BackendUnavailable("NVIDIA driver not loaded (Driver Not Loaded)")

    assert collect(factory) == ([], [], "NVIDIA driver not loaded (Driver Not Loaded)")


def test_through_nvml_source_and_fake_bindings() -> None:
    lib = FakeNvml(
        [FakeGpu("GPU-cc", "NVIDIA L4", 24 * GiB, 3 * GiB, 0, 12, 50, 30_000, 0)],
        [FakeGpuProcess(77, 0, 3 * GiB)],
    )
    src = NvmlSource(lib, describe=lambda pid: ("python", "dora", "python serve.py"))
    assert render_lines(*collect(src)) == [
        "GPU 0  NVIDIA L4  3.00 GiB / 24.00 GiB used  util 12%  50°C  30 W  MIG off  GPU-cc",
        "    pid 77          3.00 GiB  dora       python serve.py",
    ]
    broken = NvmlSource(FakeNvml(init_error=NVML_ERROR_DRIVER_NOT_LOADED))
    assert render_lines(*collect(broken)) == [
        "no NVIDIA GPU found: NVIDIA driver not loaded (Driver Not Loaded) (hint: load the driver "
        "(nvidia-smi should work) or run on a machine with a GPU)"
    ]


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("GPU")] == ["GPU 0", "GPU 1"]
    assert len(lines) == 5
    assert main(["devices", "--demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [len(d["processes"]) for d in report["devices"]] == [1, 2]
