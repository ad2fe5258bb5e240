"""The device waterfall: NVML's figure for this process, broken down to the engine's categories.

::

    NVML: memory used by this process
     ├─ CUDA context + memory outside PyTorch (NCCL, cuBLAS handles, other libraries)
     └─ PyTorch reserved (caching allocator segments)
         ├─ cached but free (reusable, or fragmented)
         └─ allocated
             ├─ weights · buffers · gradients · optimizer · activations · kv_cache · ...
             └─ not attributed (allocated, but not seen by the engine)

Each level is the sum of the one below it, by construction: ``outside_pytorch = nvml - reserved``
and ``cached_free = reserved - allocated``. A negative part means the readings were taken at
different moments (NVML is read at most twice a second) or NVML's figure is an estimate; the
figures are kept as measured and :meth:`Waterfall.problems` says what looks wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from profiler.backends import nvml
from profiler.records import CATEGORIES, AllocatorReading, Category, NvmlReading, Sample
from profiler.run import RunView
from profiler.units import format_bytes

__all__ = [
    "Waterfall",
    "build_waterfall",
    "recorded_readings",
    "snapshot_reading",
    "waterfall",
    "waterfall_at_failure",
]


@dataclass(frozen=True, slots=True)
class Waterfall:
    """One device's memory from NVML down to categories (bytes; ``None`` where a source is missing).

    Attributes:
        device: the device (``"cuda:0"``), or ``None``.
        nvml_process_used: NVML's memory for this process.
        outside_pytorch: the CUDA context and memory other libraries took (NVML − reserved).
        reserved: the caching allocator's segments.
        cached_free: reserved but not allocated (reusable, or fragmented).
        allocated: handed out to tensors.
        categories: the engine's bytes per category, in :data:`CATEGORIES` order.
        unattributed: allocated − the categories' sum (what the engine did not see).
        inactive_split: the fragmented part of ``cached_free`` (split blocks, not releasable).
    """

    device: str | None
    nvml_process_used: int | None
    outside_pytorch: int | None
    reserved: int | None
    cached_free: int | None
    allocated: int | None
    categories: Mapping[Category, int] = field(default_factory=dict)
    unattributed: int | None = None
    inactive_split: int | None = None

    @property
    def categories_total(self) -> int:
        """The sum of the categories."""
        return sum(self.categories.values())

    def problems(self) -> list[str]:
        """What does not add up, in words (empty when every part is non-negative)."""
        out = []
        if self.outside_pytorch is not None and self.outside_pytorch < 0:
            out.append(
                "NVML reports less than PyTorch reserved: the readings are from different "
                "moments, or NVML's figure for this process is an estimate"
            )
        if self.cached_free is not None and self.cached_free < 0:
            out.append("allocated exceeds reserved: the allocator readings are inconsistent")
        if self.unattributed is not None and self.unattributed < 0:
            out.append(
                "the engine's categories exceed allocated: readings from different moments, "
                "or tensors counted twice"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (bytes as ints, categories by name)."""
        return {
            "device": self.device,
            "nvml_process_used": self.nvml_process_used,
            "outside_pytorch": self.outside_pytorch,
            "reserved": self.reserved,
            "cached_free": self.cached_free,
            "inactive_split": self.inactive_split,
            "allocated": self.allocated,
            "categories": {str(k): int(v) for k, v in self.categories.items()},
            "unattributed": self.unattributed,
        }

    def lines(self) -> list[str]:
        """The waterfall as an indented tree, one part per line, sizes right-aligned."""
        rows: list[tuple[str, int | None]] = [
            ("NVML: used by this process", self.nvml_process_used),
            ("├─ CUDA context + outside PyTorch", self.outside_pytorch),
            ("└─ PyTorch reserved", self.reserved),
            ("   ├─ cached but free", self.cached_free),
        ]
        if self.inactive_split:
            rows.append(("   │  └─ of which fragmented", self.inactive_split))
        rows.append(("   └─ allocated", self.allocated))
        shown = [(str(c), v) for c, v in self.categories.items() if v]
        if self.unattributed:
            shown.append(("not attributed", self.unattributed))
        for i, (name, value) in enumerate(shown):
            branch = "└─" if i == len(shown) - 1 else "├─"
            rows.append((f"      {branch} {name}", value))
        width = max(len(label) for label, _ in rows) + 2
        title = f"waterfall ({self.device})" if self.device else "waterfall"
        return [title] + [f"{label:<{width}}{format_bytes(value):>12}" for label, value in rows]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _sub(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def _categories(values: Mapping[Any, int] | Sequence[int] | None) -> dict[Category, int]:
    if values is None:
        return {}
    if isinstance(values, Mapping):
        by_name = {Category(str(k)): int(v) for k, v in values.items()}
        return {c: by_name.get(c, 0) for c in CATEGORIES}
    if len(values) != len(CATEGORIES):
        raise ValueError(f"expected {len(CATEGORIES)} category values, got {len(values)}")
    return {c: int(v) for c, v in zip(CATEGORIES, values, strict=True)}


def build_waterfall(
    *,
    nvml_used: int | None,
    reserved: int | None,
    allocated: int | None,
    categories: Mapping[Any, int] | Sequence[int] | None,
    device: str | None = None,
    inactive_split: int | None = None,
) -> Waterfall:
    """The waterfall from its four readings.

    Args:
        nvml_used: NVML's memory for this process (``None``: no NVML).
        reserved: the allocator's reserved bytes (``None``: no allocator reading).
        allocated: the allocator's allocated bytes.
        categories: bytes per category, as a mapping (category or its name → bytes) or a
            sequence in :data:`CATEGORIES` order.
        device: the device's name for the title.
        inactive_split: the allocator's inactive split bytes (fragmentation), if known.
    """
    cats = _categories(categories)
    return Waterfall(
        device=device,
        nvml_process_used=nvml_used,
        outside_pytorch=_sub(nvml_used, reserved),
        reserved=reserved,
        cached_free=_sub(reserved, allocated),
        allocated=allocated,
        categories=cats,
        unattributed=None if allocated is None or not cats else allocated - sum(cats.values()),
        inactive_split=inactive_split,
    )


def _from_readings(
    sample: Sample | None,
    allocator: AllocatorReading | None,
    nvml_reading: NvmlReading | None,
    device: str | None,
) -> Waterfall:
    return build_waterfall(
        nvml_used=None if nvml_reading is None else nvml_reading.process_used,
        reserved=None if allocator is None else allocator.reserved,
        allocated=None if allocator is None else allocator.allocated,
        categories=None if sample is None else sample.bytes,
        device=device,
        inactive_split=None if allocator is None else allocator.inactive_split,
    )


def snapshot_reading(
    snapshot: Mapping[str, Any] | None, device_index: int | None
) -> AllocatorReading | None:
    """Reserved and allocated bytes from an allocator snapshot (``None``: no segments in it)."""
    if not snapshot:
        return None
    from profiler.backends import cuda  # deferred: it imports torch, a saved run never needs it

    segments = cuda.segments_from_snapshot(snapshot, device_index)
    if not segments:
        return None
    return AllocatorReading(
        allocated=sum(s.allocated for s in segments), reserved=sum(s.total for s in segments)
    )


def _latest(
    samples: Sequence[Sample],
) -> tuple[Sample | None, AllocatorReading | None, NvmlReading | None]:
    """The last sample with allocator figures (else the last), its figures and the latest NVML."""
    latest_nvml = next((s.nvml for s in reversed(samples) if s.nvml is not None), None)
    chosen = next((s for s in reversed(samples) if s.allocator is not None), None)
    if chosen is None:
        return (samples[-1] if samples else None), None, latest_nvml
    # NVML is read at most twice a second: the sample's own reading, else the latest one
    return chosen, chosen.allocator, chosen.nvml or latest_nvml


def recorded_readings(
    run: RunView,
) -> tuple[Sample | None, AllocatorReading | None, NvmlReading | None]:
    """The sample a waterfall shows, and the allocator's and NVML's figures for it, as recorded.

    At a failure: the failure's own sample, the allocator figures taken with it (else from the
    allocator snapshot taken at the failure, else the latest recorded) and its NVML figures (else
    the latest recorded). Without one: the last sample that has allocator figures (else the last
    sample) and the latest NVML figures. Never reads the device.
    """
    latest, latest_allocator, latest_nvml = _latest(run.samples)
    failure = run.failure
    if failure is None:
        return latest, latest_allocator, latest_nvml
    sample = failure.sample
    allocator = sample.allocator or snapshot_reading(failure.snapshot, run.info.device_index)
    return sample, allocator or latest_allocator, sample.nvml or latest_nvml


def waterfall(run: RunView) -> Waterfall:
    """The waterfall for a run's device at its last sample that has allocator figures.

    The categories are the sample's: from the ledger in exact mode, from the allocator counter
    split by the known tensors in fast mode. Where no sample has allocator figures (tracking never
    reached a boundary on CUDA), the allocator and NVML are read now (never starting CUDA).
    """
    info = run.info
    sample, allocator, reading = _latest(run.samples)
    if allocator is None and info.device_type == "cuda":
        from profiler.backends import cuda  # deferred: it imports torch, a saved run never needs it

        allocator = cuda.allocator_reading(info.device_index)
        reading = nvml.process_reading(info.device_index)
    return _from_readings(sample, allocator, reading, info.device)


def waterfall_at_failure(run: RunView) -> Waterfall:
    """The waterfall at the run's failure (see :func:`recorded_readings`); never reads the device.

    Without a failure, the same as :func:`waterfall`.
    """
    if run.failure is None:
        return waterfall(run)
    sample, allocator, reading = recorded_readings(run)
    return _from_readings(sample, allocator, reading, run.info.device)
