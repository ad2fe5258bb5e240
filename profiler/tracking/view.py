"""The engine's answers to :class:`~profiler.run.RunView`: what it measured, read from its state.

:class:`EngineView` is the read side of one :class:`~profiler.tracking.engine.Engine`: immutable
records built from the engine's state on each call, plus the run's facts by name. The facade
(:class:`~profiler.tracker.MemoryTracker`) is one, and adds the control and the result views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from profiler.ranks import current_ranks
from profiler.records import (
    Category,
    Event,
    Failure,
    LiveStorage,
    ModuleActivity,
    Peaks,
    Sample,
    SessionInfo,
    StepRecord,
)
from profiler.shards import SUBLABELS
from profiler.tracking.engine import Engine

__all__ = ["EngineView"]


class EngineView:
    """A :class:`~profiler.run.RunView` over one engine (during its block and after it)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._state = engine.state

    @property
    def info(self) -> SessionInfo:
        """The run's facts as seen so far (a fresh immutable record each call)."""
        return self._state.info()

    @property
    def samples(self) -> list[Sample]:
        """Samples taken so far (bounded: older ones are thinned on long runs)."""
        return self._engine.history.sample_records()

    @property
    def steps(self) -> list[StepRecord]:
        """One record per finished step (bounded like :attr:`samples`)."""
        return self._engine.history.step_records()

    @property
    def peaks(self) -> Peaks:
        """The highest total, its split, each category's own highest, and the bytes now."""
        ledger = self._state.ledger
        return Peaks(
            total=int(ledger.peak),
            at_peak=tuple(int(v) for v in ledger.at_peak),
            by_category=tuple(int(v) for v in ledger.category_peak),
            current=tuple(int(v) for v in self._engine.current_split()),
        )

    @property
    def failure(self) -> Failure | None:
        """The out-of-memory failure, if the block had one (a frozen record with its sample)."""
        return self._state.failure

    @property
    def predicted(self) -> Mapping[Category, int | None]:
        """Predicted bytes per category (filled at the block's end)."""
        return self._state.predicted

    @property
    def device_total(self) -> int | None:
        """The device's memory: a simulated capacity, else NVML's total (CUDA), else ``None``."""
        if self._state.capacity is not None:
            return self._state.capacity
        nvml = self._engine.history.last_nvml
        total = nvml.device_total if nvml is not None else None
        return total if isinstance(total, int) and total > 0 else None

    @property
    def model(self) -> torch.nn.Module | None:
        """The tracked model while it is alive (the tracker holds it weakly)."""
        return self._state.model

    def module_activity(self) -> list[ModuleActivity]:
        """One record per module seen, in the order first seen."""
        return self._state.module_activity()

    def live_storages(self) -> list[LiveStorage]:
        """Every storage the ledger holds now, largest first."""
        return self._state.ledger.live_storages()

    def kv_caches(self) -> list[Any]:
        """The live cache objects the tracker knows."""
        return self._engine.known.kv_caches()

    # ================================================================== facts, by name

    @property
    def name(self) -> str:
        """The session's name."""
        return self._state.name

    @property
    def mode(self) -> str:
        """``"exact"`` or ``"fast"`` (resolved at entry)."""
        return str(self._state.mode)

    @property
    def device(self) -> torch.device:
        """The device accounted for (resolved at entry)."""
        return self._state.device

    @property
    def rank(self) -> int | None:
        """This process's rank (torch.distributed, else RANK/SLURM_PROCID), or ``None``."""
        return current_ranks().rank

    @property
    def world_size(self) -> int | None:
        """The job's world size (torch.distributed, else WORLD_SIZE/SLURM_NTASKS), or ``None``."""
        return current_ranks().world_size

    @property
    def job_id(self) -> str | None:
        """The id that groups this job's ranks (:func:`profiler.ranks.current_ranks`)."""
        return current_ranks().job_id

    def sublabels(self) -> dict[str, dict[str, Any]]:
        """FSDP/DDP memory named within its category: label → category, current, peak bytes."""
        ledger = self._state.ledger
        return {
            label: {
                "category": SUBLABELS[label],
                "current": value,
                "peak": ledger.label_peak[label],
            }
            for label, value in sorted(ledger.label_current.items())
        }

    @property
    def events(self) -> Sequence[Event]:
        """The newest events (the session stream on disk has them all)."""
        return self._engine.history.events

    @property
    def session_dir(self) -> Any:
        """The session's directory under ``$GPUMEM_HOME`` (``None`` without a stream)."""
        return self._state.session_dir

    @property
    def hunting(self) -> bool:
        """Whether a leak hunt is recording creation sites now."""
        return self._engine.hunting

    @property
    def kv_cache_reused(self) -> bool:
        """Whether a prompt was fed to a KV cache that already held positions."""
        return self._state.kv_cache_reused

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype seen at a forward start (``None``: no autocast)."""
        return self._state.autocast_dtype

    @property
    def peak_bytes(self) -> int:
        """The highest total seen."""
        return int(self._state.ledger.peak)

    @property
    def current_bytes(self) -> int:
        """The total now (at the block's end, once it has exited)."""
        return int(sum(self._engine.current_split()))
