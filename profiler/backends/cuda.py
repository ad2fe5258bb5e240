"""The CUDA caching allocator: the only module that touches ``torch.cuda`` internals.

Nothing here initialises CUDA: every reader returns ``None`` (or 0, or an empty list) while CUDA is
not initialised. The private hooks (``torch._C._cuda_memorySnapshot``,
``_cuda_record_memory_history``, ``_cuda_attach_out_of_memory_observer``) are looked up when
used; where a torch build lacks one (CPU builds, ROCm, old versions) the wrapper raises
:class:`~profiler.errors.BackendUnavailable`.

Every reader takes ``api=``: the torch-backed :class:`TorchCudaApi` by default, or a
:class:`~profiler.backends.fake.FakeAllocator` with scripted statistics in tests and demos.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from profiler.errors import BackendUnavailable
from profiler.records import AllocatorReading

__all__ = [
    "BLOCK_ROUNDING",
    "STAT_KEYS",
    "AllocatorApi",
    "Block",
    "HostAllocatorReading",
    "MemoryHistory",
    "OomNotice",
    "OomObserver",
    "Segment",
    "TorchCudaApi",
    "allocated_bytes",
    "allocator_reading",
    "current_device_index",
    "device_uuid",
    "host_allocator_reading",
    "is_initialized",
    "pick_stats",
    "reading_from_stats",
    "round_size",
    "segment_map",
    "segments_from_snapshot",
]

#: The caching allocator hands out blocks in multiples of 512 bytes (kMinBlockSize).
BLOCK_ROUNDING = 512

#: The ``torch.cuda.memory_stats`` keys an :class:`AllocatorReading` is made of.
STAT_KEYS = (
    "allocated_bytes.all.current",
    "allocated_bytes.all.peak",
    "reserved_bytes.all.current",
    "active_bytes.all.current",
    "inactive_split_bytes.all.current",
    "num_alloc_retries",
    "num_ooms",
)

OomCallback = Callable[[int, int, int, int], None]


class AllocatorApi(Protocol):
    """What the readers need from the CUDA allocator (torch's, or a fake with scripted stats).

    ``record_memory_history`` and ``attach_oom_observer`` are only called after
    ``has_history`` / ``has_oom_observer`` say the build has them.
    """

    @property
    def has_history(self) -> bool: ...
    @property
    def has_oom_observer(self) -> bool: ...

    def is_initialized(self) -> bool: ...
    def memory_stats(self, device: Any = None) -> Mapping[str, Any]: ...
    def memory_snapshot(self) -> Mapping[str, Any]: ...
    def record_memory_history(self, enabled: str | None, max_entries: int) -> None: ...
    def attach_oom_observer(self, callback: OomCallback) -> None: ...
    def host_memory_stats(self) -> Mapping[str, Any] | None: ...
    def device_uuid(self, index: int) -> str | None: ...


class TorchCudaApi:
    """The real allocator, through ``torch.cuda`` and the private ``torch._C`` hooks."""

    @property
    def has_history(self) -> bool:
        """Whether this torch build can record the allocator's history."""
        return hasattr(torch._C, "_cuda_record_memory_history") and hasattr(
            torch.cuda.memory, "_record_memory_history"
        )

    @property
    def has_oom_observer(self) -> bool:
        """Whether this torch build has the out-of-memory observer hook."""
        return hasattr(torch._C, "_cuda_attach_out_of_memory_observer")

    def is_initialized(self) -> bool:
        """Whether CUDA is initialised (never initialises it)."""
        return bool(torch.cuda.is_initialized())

    def memory_stats(self, device: Any = None) -> Mapping[str, Any]:
        """The allocator's statistics that gpumem reads, keyed like ``torch.cuda.memory_stats``.

        Reads torch's nested dict (``torch._C._cuda_memoryStats``) and picks the keys of
        :data:`STAT_KEYS`: ``torch.cuda.memory_stats`` flattens and sorts every statistic in
        Python (hundreds of µs a call), too slow for fast mode's per-module boundaries. Falls back
        to ``torch.cuda.memory_stats`` where the hook is missing. Call only once CUDA is
        initialised.
        """
        nested_stats = getattr(torch._C, "_cuda_memoryStats", None)
        if nested_stats is None:
            return torch.cuda.memory_stats(device)
        from torch.cuda._utils import _get_device_index

        return pick_stats(nested_stats(_get_device_index(device, optional=True)))

    def memory_snapshot(self) -> Mapping[str, Any]:
        """``torch.cuda.memory._snapshot()``: every segment and block, as plain dicts."""
        if not hasattr(torch._C, "_cuda_memorySnapshot"):
            raise BackendUnavailable(
                "this torch build has no CUDA memory snapshot",
                hint="install a CUDA build of torch (pip install torch --index-url ...cu12x)",
            )
        return torch.cuda.memory._snapshot()

    def record_memory_history(self, enabled: str | None, max_entries: int) -> None:
        """``torch.cuda.memory._record_memory_history``."""
        record: Callable[..., None] = torch.cuda.memory._record_memory_history
        record(enabled, max_entries=max_entries)

    def attach_oom_observer(self, callback: OomCallback) -> None:
        """``torch._C._cuda_attach_out_of_memory_observer`` (torch has no way to detach)."""
        getattr(torch._C, "_cuda_attach_out_of_memory_observer")(callback)  # noqa: B009

    def host_memory_stats(self) -> Mapping[str, Any] | None:
        """``torch.cuda.host_memory_stats()`` (pinned host memory), where this build has it."""
        if not hasattr(torch._C, "_cuda_hostMemoryStats"):
            return None
        return torch.cuda.host_memory_stats()

    def device_uuid(self, index: int) -> str | None:
        """The UUID CUDA reports for device ``index`` (callers normalise the spelling)."""
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        return None if uuid is None else str(uuid)


_TORCH = TorchCudaApi()


def _api(api: AllocatorApi | None) -> AllocatorApi:
    return _TORCH if api is None else api


def pick_stats(nested: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`STAT_KEYS` of torch's nested statistics, keyed the flat way."""
    out: dict[str, Any] = {}
    for key in STAT_KEYS:
        value: Any = nested
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            out[key] = value
    return out


def round_size(nbytes: int) -> int:
    """The bytes the caching allocator charges for a request of ``nbytes``."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // BLOCK_ROUNDING) * BLOCK_ROUNDING


def is_initialized(api: AllocatorApi | None = None) -> bool:
    """Whether CUDA is initialised in this process (never initialises it)."""
    return _api(api).is_initialized()


def allocated_bytes(
    device: torch.device | int | None = None, *, api: AllocatorApi | None = None
) -> int:
    """Bytes PyTorch has allocated on ``device`` (0 while CUDA is not initialised)."""
    api = _api(api)
    if not api.is_initialized():
        return 0
    return int(api.memory_stats(device).get("allocated_bytes.all.current", 0))


def reading_from_stats(stats: Mapping[str, Any]) -> AllocatorReading | None:
    """An :class:`AllocatorReading` from a ``memory_stats()`` dict (``None`` for an empty one).

    ``inactive_split`` (cached blocks split off a larger segment that cannot be returned to the
    driver) is the fragmentation figure.
    """
    if not stats:
        return None

    def get(key: str) -> int | None:
        value = stats.get(key)
        return None if value is None else int(value)

    return AllocatorReading(
        allocated=int(stats.get("allocated_bytes.all.current", 0)),
        reserved=int(stats.get("reserved_bytes.all.current", 0)),
        active=get("active_bytes.all.current"),
        inactive_split=get("inactive_split_bytes.all.current"),
        peak_allocated=get("allocated_bytes.all.peak"),
        num_alloc_retries=get("num_alloc_retries"),
        num_ooms=get("num_ooms"),
    )


def allocator_reading(
    device: torch.device | int | None = None, *, api: AllocatorApi | None = None
) -> AllocatorReading | None:
    """The allocator's figures for ``device``, or ``None`` while CUDA is not initialised.

    About 10 µs a call on a real device (one dict from the allocator).
    """
    api = _api(api)
    if not api.is_initialized():
        return None
    return reading_from_stats(api.memory_stats(device))


def device_uuid(index: int | None = None, *, api: AllocatorApi | None = None) -> str | None:
    """The UUID of CUDA device ``index`` (default: the current one), or ``None``.

    ``None`` while CUDA is not initialised: asking would initialise it.
    """
    api = _api(api)
    if not api.is_initialized():
        return None
    if index is None:
        index = torch.cuda.current_device()
    try:
        return api.device_uuid(index)
    except (RuntimeError, AssertionError, AttributeError):
        return None


def current_device_index(*, api: AllocatorApi | None = None) -> int:
    """The current CUDA device's index, or 0 while CUDA is not initialised (never initialises)."""
    api = _api(api)
    if not api.is_initialized():
        return 0
    return int(torch.cuda.current_device())


# -- the segment map -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """One block of a segment: ``state`` is active_allocated, active_awaiting_free or inactive."""

    address: int
    size: int
    requested_size: int
    state: str


@dataclass(frozen=True, slots=True)
class Segment:
    """One ``cudaMalloc`` region the caching allocator holds, and how it is carved up."""

    device: int
    address: int
    total: int
    allocated: int
    active: int
    pool: str  # "large" or "small"
    stream: int
    blocks: tuple[Block, ...]

    @property
    def free(self) -> int:
        """Cached bytes in this segment that no tensor uses."""
        return self.total - self.allocated

    @property
    def largest_free_block(self) -> int:
        """The biggest inactive block: the largest request this segment could serve now."""
        return max((b.size for b in self.blocks if b.state == "inactive"), default=0)


def segments_from_snapshot(snapshot: Mapping[str, Any], device: int | None = None) -> list[Segment]:
    """The segments of a ``torch.cuda.memory._snapshot()`` dict (plain dicts, no torch needed).

    Args:
        snapshot: the snapshot dict.
        device: keep only this device's segments (``None``: all).
    """
    segments = []
    for raw in snapshot.get("segments", ()):
        dev = int(raw.get("device", 0))
        if device is not None and dev != device:
            continue
        blocks = tuple(
            Block(
                address=int(b.get("address", 0)),
                size=int(b.get("size", 0)),
                requested_size=int(b.get("requested_size", b.get("size", 0))),
                state=str(b.get("state", "inactive")),
            )
            for b in raw.get("blocks", ())
        )
        segments.append(
            Segment(
                device=dev,
                address=int(raw.get("address", 0)),
                total=int(raw.get("total_size", 0)),
                allocated=int(raw.get("allocated_size", 0)),
                active=int(raw.get("active_size", 0)),
                pool=str(raw.get("segment_type", "large")),
                stream=int(raw.get("stream", 0)),
                blocks=blocks,
            )
        )
    segments.sort(key=lambda s: (s.device, s.address))
    return segments


def segment_map(device: int | None = None, *, api: AllocatorApi | None = None) -> list[Segment]:
    """The allocator's segments now (empty while CUDA is not initialised).

    Takes milliseconds on a busy device (the allocator copies its whole state): call it for a
    report, never per step.

    Raises:
        BackendUnavailable: this torch build has no memory snapshot.
    """
    api = _api(api)
    if not api.is_initialized():
        return []
    return segments_from_snapshot(api.memory_snapshot(), device)


# -- memory history --------------------------------------------------------------------------


class MemoryHistory:
    """Record the allocator's history (each alloc and free, with stacks) while in the block.

    ``torch.cuda.memory._record_memory_history`` costs about 2 µs per allocation. Recording is a
    process-wide switch: leaving the block switches it off. Call it once CUDA is initialised.

    Raises:
        BackendUnavailable: on ``__enter__``, where this torch build cannot record history.
    """

    def __init__(self, max_entries: int = 100_000, *, api: AllocatorApi | None = None) -> None:
        self.max_entries = max_entries
        self._api = _api(api)
        self.active = False

    def __enter__(self) -> MemoryHistory:
        if not self._api.has_history:
            raise BackendUnavailable(
                "this torch build cannot record CUDA memory history",
                hint="use a CUDA build of torch 2.1 or newer",
            )
        self._api.record_memory_history("all", self.max_entries)
        self.active = True
        return self

    def snapshot(self) -> Mapping[str, Any]:
        """The snapshot now, with the recorded history in ``device_traces``."""
        return self._api.memory_snapshot()

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self._api.record_memory_history(None, self.max_entries)
            self.active = False


# -- the out-of-memory observer --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OomNotice:
    """What the caching allocator says when an allocation fails (bytes).

    ``device_total`` is the device's memory, or the per-process limit where
    ``torch.cuda.set_per_process_memory_fraction`` set one (torch's Python binding names this
    argument ``device_allocated``; the allocator passes the total).
    """

    device: int
    requested: int
    device_total: int
    device_free: int


class _OomDispatcher:
    """The one observer gpumem attaches to each allocator; it fans out to the live observers.

    torch offers no way to detach an observer, so gpumem attaches one dispatcher per allocator
    api and never more, and :class:`OomObserver` objects come and go in its list.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.observers: list[OomObserver] = []
        self.attached: set[int] = set()  # id() of each api attached to

    def __call__(self, device: int, requested: int, allocated: int, free: int) -> None:
        notice = OomNotice(int(device), int(requested), int(allocated), int(free))
        for observer in list(self.observers):
            observer._notify(notice)


_DISPATCHER = _OomDispatcher()


class OomObserver:
    """Hear about every real CUDA out-of-memory error, before torch raises it.

    ``attach()`` returns ``False`` while CUDA is not initialised (the allocator only accepts
    observers once it exists): call it again later, e.g. at each step end; it is cheap.
    ``notices`` keeps what was heard; ``callback`` (if given) is called too, and an exception in it
    is swallowed, since it runs inside the allocator. With ``snapshot=True`` the allocator's
    memory snapshot at the moment of the failure is kept in ``snapshots`` (one per notice, ``None``
    where it could not be taken): the allocator releases its lock before calling observers, so the
    snapshot shows the state that failed, before torch unwinds anything.

    Raises:
        BackendUnavailable: on ``attach()``, where this torch build has no OOM observer hook.
    """

    def __init__(
        self,
        callback: Callable[[OomNotice], None] | None = None,
        *,
        snapshot: bool = False,
        api: AllocatorApi | None = None,
    ) -> None:
        self._api = _api(api)
        self.callback = callback
        self.snapshot = snapshot
        self.notices: list[OomNotice] = []
        self.snapshots: list[Mapping[str, Any] | None] = []
        self.attached = False

    def attach(self) -> bool:
        """Start listening; ``False`` while CUDA is not initialised yet."""
        if self.attached:
            return True
        if not self._api.has_oom_observer:
            raise BackendUnavailable(
                "this torch build has no CUDA out-of-memory observer",
                hint="use a CUDA build of torch 2.0 or newer",
            )
        if not self._api.is_initialized():
            return False
        with _DISPATCHER.lock:
            if id(self._api) not in _DISPATCHER.attached:
                self._api.attach_oom_observer(_DISPATCHER)
                _DISPATCHER.attached.add(id(self._api))
            _DISPATCHER.observers.append(self)
        self.attached = True
        return True

    def detach(self) -> None:
        """Stop listening (torch keeps gpumem's dispatcher, which then calls nobody)."""
        with _DISPATCHER.lock:
            if self in _DISPATCHER.observers:
                _DISPATCHER.observers.remove(self)
        self.attached = False

    def _notify(self, notice: OomNotice) -> None:
        self.notices.append(notice)
        if self.snapshot:
            taken: Mapping[str, Any] | None = None
            with contextlib.suppress(Exception):
                taken = self._api.memory_snapshot()
            self.snapshots.append(taken)
        if self.callback is not None:
            # Runs inside the allocator, which is about to raise OutOfMemoryError: never raise here.
            with contextlib.suppress(Exception):
                self.callback(notice)

    def __enter__(self) -> OomObserver:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


# -- pinned host memory (CPU offload) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostAllocatorReading:
    """The CUDA pinned-host allocator's figures (bytes): memory for CPU offload and copies.

    ``held`` is every pinned block the allocator owns (in use + cached), ``in_use`` the blocks
    handed out now; ``None`` where this torch version does not report the figure.
    """

    held: int
    in_use: int | None
    peak_held: int | None


def host_allocator_reading(*, api: AllocatorApi | None = None) -> HostAllocatorReading | None:
    """Pinned host memory held by torch's host allocator; ``None`` without CUDA or this stat."""
    api = _api(api)
    if not api.is_initialized():
        return None
    stats = api.host_memory_stats()
    if not stats:
        return None

    def get(key: str) -> int | None:
        value = stats.get(key)
        return None if value is None else int(value)

    return HostAllocatorReading(
        held=int(stats.get("allocated_bytes.current", 0)),
        in_use=get("active_bytes.current"),
        peak_held=get("allocated_bytes.peak"),
    )
