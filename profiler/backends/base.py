"""The records and the protocol every device source speaks (NVML, fake, and any future one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["DeviceInfo", "DeviceSource", "ProcessInfo"]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One GPU as the driver sees it; a figure the driver would not give is ``None``."""

    index: int
    uuid: str | None
    name: str | None
    memory_total: int | None
    memory_used: int | None
    memory_free: int | None
    utilization: int | None = None  # percent
    temperature: int | None = None  # degrees Celsius
    power_watts: float | None = None
    mig_mode: bool | None = None


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process holding memory on a GPU."""

    pid: int
    device_index: int
    gpu_memory: int | None
    name: str | None = None
    user: str | None = None
    command: str | None = None


@runtime_checkable
class DeviceSource(Protocol):
    """Anything that can list GPUs and the processes on them (NVML, the fake, a test script)."""

    def devices(self) -> list[DeviceInfo]:
        """Every visible GPU, in index order."""
        ...

    def processes(self) -> list[ProcessInfo]:
        """Every process holding GPU memory that the driver reports."""
        ...
