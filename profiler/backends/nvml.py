"""NVML devices and processes: the only module that imports ``pynvml`` (from nvidia-ml-py).

NVML starts lazily, under a lock, on the first query, and shuts down at interpreter exit. Every
call goes through one funnel (:meth:`NvmlLibrary.query`): a per-call error (not supported,
function not found, no permission, GPU lost, unknown) becomes the default value (``None``) and is
logged once per function on the ``gpumem.nvml`` logger; a missing library or driver raises
:class:`~profiler.errors.BackendUnavailable` with a ``HINT:`` line.

Device numbering: NVML numbers every GPU on the machine (PCI order); CUDA numbers the ones
``CUDA_VISIBLE_DEVICES`` lets the process see. ``process_reading(device_index)`` takes the CUDA
ordinal, as torch does, and finds the NVML device by the UUID torch reports (once CUDA is
initialised: it never initialises CUDA), else by ``CUDA_VISIBLE_DEVICES``, else by position.

Containers: inside a pid namespace NVML reports host pids, so this process may not find its own
pid in the device's process list. It then takes the device's only process row, or, with several,
the device's used memory (an upper bound); :class:`ProcessMemory` says which (``estimated``).

Swap the bindings with ``NvmlSource(lib=FakeNvml(...))`` (see :mod:`profiler.backends.fake`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from profiler.backends.base import DeviceInfo, ProcessInfo
from profiler.errors import BackendUnavailable
from profiler.records import NvmlReading

__all__ = [
    "NvmlLibrary",
    "NvmlSource",
    "ProcessMemory",
    "default_source",
    "normalize_uuid",
    "process_reading",
]

log = logging.getLogger("gpumem.nvml")

# NVML return codes (fixed by the NVML C API).
_NO_PERMISSION = 4
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_ARGUMENT_VERSION_MISMATCH = 25

_MISSING = object()

_HINT_LIBRARY = (
    "install the NVIDIA driver (it ships libnvidia-ml.so.1); in a container, start it with the "
    "NVIDIA Container Toolkit (docker run --gpus all)"
)


class NvmlLibrary:
    """One NVML session over pynvml (or a pynvml-shaped fake): lazy start and one query funnel.

    Args:
        lib: the bindings; ``None`` imports ``pynvml`` on first use.
    """

    def __init__(self, lib: Any | None = None) -> None:
        self._lib = lib
        self._lock = threading.Lock()
        self._started = False
        self._failure: BackendUnavailable | None = None
        self._logged: set[str] = set()
        self._absent: set[str] = set()  # functions this library lacks: never asked again
        self._atexit = False

    @property
    def started(self) -> bool:
        """Whether NVML is running in this session."""
        return self._started

    def ensure(self) -> Any:
        """Start NVML once and return the bindings.

        Raises:
            BackendUnavailable: the bindings, the library or the driver are missing (remembered:
                later calls raise the same error without trying again).
        """
        if self._started:
            return self._lib
        with self._lock:
            if self._started:
                return self._lib
            if self._failure is not None:
                raise self._failure
            try:
                self._lib = self._start(self._lib)
            except BackendUnavailable as exc:
                self._failure = exc
                raise
            self._started = True
            if not self._atexit:
                atexit.register(self.shutdown)
                self._atexit = True
            return self._lib

    @staticmethod
    def _start(bindings: Any | None) -> Any:
        lib: Any = bindings
        if lib is None:
            try:
                import pynvml

                lib = pynvml
            except ImportError as exc:
                raise BackendUnavailable(
                    f"NVML bindings not installed ({exc})", hint="pip install nvidia-ml-py"
                ) from None
        try:
            lib.nvmlInit()
        except lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == _LIBRARY_NOT_FOUND:
                raise BackendUnavailable(
                    f"NVML library not available ({exc})", hint=_HINT_LIBRARY
                ) from None
            if code == _DRIVER_NOT_LOADED:
                raise BackendUnavailable(
                    f"NVIDIA driver not loaded ({exc})",
                    hint="load the driver (nvidia-smi should work) or run on a machine with a GPU",
                ) from None
            if code == _NO_PERMISSION:
                raise BackendUnavailable(
                    f"no permission to use NVML ({exc})",
                    hint="check the permissions of /dev/nvidia* for this user",
                ) from None
            raise BackendUnavailable(f"NVML failed to start ({exc})") from None
        except OSError as exc:  # a broken library that loads but cannot be called
            raise BackendUnavailable(
                f"NVML library not available ({exc})", hint=_HINT_LIBRARY
            ) from None
        return lib

    def shutdown(self) -> None:
        """Stop NVML (at exit, or by hand); the next query starts it again."""
        with self._lock:
            if not self._started:
                return
            self._started = False
            lib: Any = self._lib
            with contextlib.suppress(Exception):  # shutting down at exit must never raise
                lib.nvmlShutdown()

    def _log_once(self, fn_name: str, reason: object) -> None:
        if fn_name not in self._logged:
            self._logged.add(fn_name)
            log.warning("NVML %s unavailable: %s", fn_name, reason)

    def call(self, fn_name: str, *args: Any, as_name: str | None = None, **kwargs: Any) -> Any:
        """Call ``fn_name``; a per-call error gives the sentinel ``_MISSING`` (logged once).

        ``as_name`` names the call in the log and in the set of absent functions, where one
        binding reaches two C functions (``nvmlDeviceGetMemoryInfo(handle, version=…)``).
        """
        lib = self.ensure()
        name = as_name or fn_name
        if name in self._absent:
            return _MISSING
        fn = getattr(lib, fn_name, None)
        if fn is None:
            self._absent.add(name)
            self._log_once(name, "not in these NVML bindings")
            return _MISSING
        mismatch = getattr(lib, "NVMLLibraryMismatchError", None)
        try:
            return fn(*args, **kwargs)
        except lib.NVMLError as exc:
            if getattr(exc, "value", None) == _LIBRARY_NOT_FOUND:
                raise BackendUnavailable(
                    f"NVML library not available ({exc})", hint=_HINT_LIBRARY
                ) from None
            if getattr(exc, "value", None) == _FUNCTION_NOT_FOUND:
                self._absent.add(name)
            self._log_once(name, exc)
            return _MISSING
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            self._log_once(name, exc)
            return _MISSING
        except Exception as exc:
            if mismatch is not None and isinstance(exc, mismatch):
                self._absent.add(name)
                self._log_once(name, "the driver's NVML lacks this function")
                return _MISSING
            raise

    def query(
        self,
        fn_name: str,
        *args: Any,
        default: Any = None,
        as_name: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call NVML function ``fn_name``; a per-call error gives ``default`` (logged once).

        Raises:
            BackendUnavailable: NVML cannot start, or its library vanished.
        """
        value = self.call(fn_name, *args, as_name=as_name, **kwargs)
        return default if value is _MISSING else value

    def query_first(self, fn_names: Sequence[str], *args: Any, default: Any = None) -> Any:
        """The first of ``fn_names`` that answers (versioned fallbacks, e.g. ``…_v2``)."""
        for fn_name in fn_names:
            value = self.call(fn_name, *args)
            if value is not _MISSING:
                return value
        return default


def normalize_uuid(uuid: object) -> str | None:
    """A UUID in one spelling: lower case, no ``GPU-``/``MIG-`` prefix (torch omits it)."""
    if uuid is None:
        return None
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text or None


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """This process on one NVML device, and how it was found.

    ``how`` is ``"pid"`` (our own row), ``"only-process"`` (no row with our pid, as in a container,
    and the device has one process: ours), ``"device"`` (no row with our pid and several or none:
    the device's used memory, an upper bound) or ``"none"`` (no figure).
    """

    nvml_index: int
    uuid: str | None
    process_used: int | None
    device_used: int | None
    device_total: int | None
    how: str

    @property
    def estimated(self) -> bool:
        """Whether ``process_used`` is an estimate rather than our own row."""
        return self.how not in ("pid", "none")

    def reading(self) -> NvmlReading:
        """The :class:`NvmlReading` the tracker stores in its samples."""
        return NvmlReading(
            process_used=self.process_used,
            device_used=self.device_used,
            device_total=self.device_total,
            device_index=self.nvml_index,
        )


_COMPUTE = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2")
_GRAPHICS = ("nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses_v2")


class NvmlSource:
    """The :class:`~profiler.backends.base.DeviceSource` over NVML, plus this process's reading.

    Args:
        lib: pynvml-shaped bindings (``None``: the real ``pynvml``).
        pid: the process treated as "this process" (default: ``os.getpid()``).
        environ: where ``CUDA_VISIBLE_DEVICES`` is read (default: ``os.environ``).
        cuda_uuid: CUDA ordinal → the UUID torch reports, ``None`` while CUDA is not initialised
            (default: :func:`profiler.backends.cuda.device_uuid`, which never initialises CUDA).
        describe: pid → (name, user, command) (default: psutil via
            :func:`profiler.backends.host.describe_process`).
    """

    def __init__(
        self,
        lib: Any | None = None,
        *,
        pid: int | None = None,
        environ: Mapping[str, str] | None = None,
        cuda_uuid: Callable[[int], str | None] | None = None,
        describe: Callable[[int], tuple[str | None, str | None, str | None]] | None = None,
    ) -> None:
        self.nvml = lib if isinstance(lib, NvmlLibrary) else NvmlLibrary(lib)
        self.pid = os.getpid() if pid is None else pid
        self._environ = os.environ if environ is None else environ
        self._cuda_uuid = cuda_uuid if cuda_uuid is not None else _torch_uuid
        self._describe = describe if describe is not None else _psutil_describe
        self._handles: dict[int, Any] = {}
        self._by_uuid: dict[int, int] = {}  # CUDA ordinal → NVML index, found by UUID
        self._uuids: dict[int, str] = {}  # NVML index → UUID
        self._count: int | None = None
        self._lock = threading.Lock()

    # -- devices ------------------------------------------------------------------------------
    def count(self) -> int:
        """How many GPUs NVML sees (0 where it cannot say); asked once per session."""
        if self._count is None:
            count = self.nvml.query("nvmlDeviceGetCount")
            if count is None:
                return 0
            self._count = int(count)
        return self._count

    def _handle(self, index: int) -> Any | None:
        handle = self._handles.get(index)
        if handle is None:
            handle = self.nvml.query("nvmlDeviceGetHandleByIndex", index)
            if handle is not None:
                with self._lock:
                    self._handles[index] = handle
        return handle

    def _memory(self, handle: Any) -> tuple[int | None, int | None, int | None]:
        """(total, used, free); v2 "used" leaves out the driver's reserve where available."""
        lib = self.nvml.ensure()
        info = None
        version = getattr(lib, "nvmlMemory_v2", None)
        if version is not None:
            info = self.nvml.query(
                "nvmlDeviceGetMemoryInfo",
                handle,
                version=version,
                as_name="nvmlDeviceGetMemoryInfo_v2",
            )
        if info is None:
            info = self.nvml.query("nvmlDeviceGetMemoryInfo", handle)
        if info is None:
            return None, None, None
        return _int(info.total), _int(info.used), _int(info.free)

    def device(self, index: int) -> DeviceInfo | None:
        """NVML device ``index`` (``None`` where NVML has no handle for it)."""
        handle = self._handle(index)
        if handle is None:
            return None
        lib = self.nvml.ensure()
        q = self.nvml.query
        total, used, free = self._memory(handle)
        util = q("nvmlDeviceGetUtilizationRates", handle)
        power = q("nvmlDeviceGetPowerUsage", handle)
        mig = q("nvmlDeviceGetMigMode", handle)
        sensor = getattr(lib, "NVML_TEMPERATURE_GPU", 0)
        return DeviceInfo(
            index=index,
            uuid=_text(q("nvmlDeviceGetUUID", handle)),
            name=_text(q("nvmlDeviceGetName", handle)),
            memory_total=total,
            memory_used=used,
            memory_free=free,
            utilization=None if util is None else _int(getattr(util, "gpu", None)),
            temperature=_int(q("nvmlDeviceGetTemperature", handle, sensor)),
            power_watts=None if power is None else int(power) / 1000.0,
            mig_mode=None if not mig else bool(mig[0]),
        )

    def devices(self) -> list[DeviceInfo]:
        """Every GPU NVML sees, in NVML index order.

        Raises:
            BackendUnavailable: NVML cannot start here.
        """
        out = []
        for index in range(self.count()):
            info = self.device(index)
            if info is not None:
                out.append(info)
        return out

    # -- processes ----------------------------------------------------------------------------
    def _rows(self, handle: Any, *, graphics: bool = True) -> list[tuple[int, int | None]]:
        """(pid, used bytes) per process on the device; a pid in both lists appears once."""
        rows: dict[int, int | None] = {}
        for names in (_COMPUTE, _GRAPHICS) if graphics else (_COMPUTE,):
            for proc in self.nvml.query_first(names, handle, default=None) or ():
                pid = _int(getattr(proc, "pid", None))
                if pid is None:
                    continue
                used = _int(getattr(proc, "usedGpuMemory", None))
                if pid not in rows or rows[pid] is None:
                    rows[pid] = used
        return list(rows.items())

    def processes(self) -> list[ProcessInfo]:
        """Every process NVML reports on any GPU, with name, user and command from psutil.

        Raises:
            BackendUnavailable: NVML cannot start here.
        """
        out = []
        details: dict[int, tuple[str | None, str | None, str | None]] = {}
        for index in range(self.count()):
            handle = self._handle(index)
            if handle is None:
                continue
            for pid, used in self._rows(handle):
                if pid not in details:
                    details[pid] = self._describe(pid)
                name, user, command = details[pid]
                out.append(ProcessInfo(pid, index, used, name, user, command))
        return out

    # -- this process -------------------------------------------------------------------------
    def nvml_index(self, cuda_index: int | None = None) -> int | None:
        """The NVML index of CUDA device ``cuda_index`` (default 0), or ``None``.

        By the UUID torch reports (once CUDA is initialised), else by ``CUDA_VISIBLE_DEVICES``
        (indices or UUID prefixes), else the ordinal itself.
        """
        ordinal = 0 if cuda_index is None else cuda_index
        found = self._by_uuid.get(ordinal)
        if found is not None:
            return found
        uuid = normalize_uuid(self._cuda_uuid(ordinal))
        if uuid is not None:
            index = self._index_for_uuid(uuid)
            if index is not None:
                with self._lock:
                    self._by_uuid[ordinal] = index
                return index
        visible = self._environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            entries = _visible_entries(visible)
            if ordinal >= len(entries):
                return None
            entry = entries[ordinal]
            if entry.isdigit():
                return int(entry)
            return self._index_for_uuid(normalize_uuid(entry) or "", prefix=True)
        count = self.count()
        return ordinal if ordinal < count else None

    def _index_for_uuid(self, uuid: str, *, prefix: bool = False) -> int | None:
        for index in range(self.count()):
            handle = self._handle(index)
            if handle is None:
                continue
            mine = normalize_uuid(self._uuid(index, handle))
            if mine is not None and (mine.startswith(uuid) if prefix else mine == uuid):
                return index
        return None

    def process_memory(self, cuda_index: int | None = None) -> ProcessMemory | None:
        """This process's memory on CUDA device ``cuda_index`` as NVML sees it, or ``None``.

        Two or three NVML calls (memory info and the compute process list; graphics too when our
        pid is not in it); handles and the UUID lookup are cached.

        Raises:
            BackendUnavailable: NVML cannot start here.
        """
        index = self.nvml_index(cuda_index)
        if index is None:
            return None
        handle = self._handle(index)
        if handle is None:
            return None
        total, used, _ = self._memory(handle)
        rows = self._rows(handle, graphics=False)
        mine = [u for pid, u in rows if pid == self.pid]
        if not mine:
            rows = self._rows(handle)
            mine = [u for pid, u in rows if pid == self.pid]
        ordinal = 0 if cuda_index is None else cuda_index
        if mine:
            known = [u for u in mine if u is not None]
            process_used = sum(known) if known else None
            how = "pid" if known else "none"
        elif ordinal not in self._by_uuid and self._cuda_uuid(ordinal) is None:
            # CUDA is not initialised here: this process holds nothing on the device yet.
            process_used, how = None, "none"
        elif len(rows) == 1 and rows[0][1] is not None:
            process_used, how = rows[0][1], "only-process"
        elif used is not None:
            process_used, how = used, "device"
        else:
            process_used, how = None, "none"
        return ProcessMemory(index, self._uuid(index, handle), process_used, used, total, how)

    def _uuid(self, index: int, handle: Any) -> str | None:
        uuid = self._uuids.get(index)
        if uuid is None:
            uuid = _text(self.nvml.query("nvmlDeviceGetUUID", handle))
            if uuid is not None:
                self._uuids[index] = uuid
        return uuid

    def process_reading(self, device_index: int | None = None) -> NvmlReading | None:
        """What the tracker stores in a sample: NVML's figures for this process (CUDA ordinal).

        ``NvmlReading.device_index`` is the NVML index of the device.
        """
        memory = self.process_memory(device_index)
        return None if memory is None else memory.reading()

    def close(self) -> None:
        """Shut NVML down now (it also shuts down at exit)."""
        self.nvml.shutdown()
        self._handles.clear()
        self._by_uuid.clear()
        self._uuids.clear()
        self._count = None


def _visible_entries(visible: str) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` as CUDA reads it: up to the first invalid entry ("" hides all)."""
    entries = []
    for raw in visible.split(","):
        entry = raw.strip()
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return entries


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _torch_uuid(index: int) -> str | None:
    from profiler.backends import cuda

    return cuda.device_uuid(index)


def _psutil_describe(pid: int) -> tuple[str | None, str | None, str | None]:
    from profiler.backends.host import describe_process

    details = describe_process(pid)
    return details.name, details.user, details.command


_default: NvmlSource | None = None
_default_lock = threading.Lock()
_warned_unavailable = False


def default_source() -> NvmlSource:
    """The shared :class:`NvmlSource` over the real NVML, started.

    Raises:
        BackendUnavailable: no NVML here (no bindings, library, driver or permission).
    """
    global _default
    with _default_lock:
        if _default is None:
            source = NvmlSource()
            source.nvml.ensure()
            _default = source
        return _default


def process_reading(device_index: int | None = None) -> NvmlReading | None:
    """NVML's figures for this process on CUDA device ``device_index``; ``None`` without NVML.

    ``None`` for ``device_index`` means the current CUDA device. Where NVML is unavailable this
    warns once and returns ``None`` (a degraded mode, not an error).
    """
    global _warned_unavailable
    if device_index is None:
        from profiler.backends import cuda

        device_index = cuda.current_device_index()
    try:
        return default_source().process_reading(device_index)
    except BackendUnavailable as exc:
        if not _warned_unavailable:
            _warned_unavailable = True
            warnings.warn(
                f"gpumem: no NVML figures: {exc.one_line()}", RuntimeWarning, stacklevel=2
            )
        return None
