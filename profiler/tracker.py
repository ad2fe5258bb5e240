"""``track_memory`` and :class:`MemoryTracker`: the facade over the engine and its observers.

The engine (:mod:`profiler.tracking`) measures, exactly (a dispatch-level ledger) or fast (an
allocator counter at boundaries); this module wires it to the observers that use what it measured
(the session stream for ``gpumem top``, the leak detector, the OOM report) and answers
:class:`~profiler.run.RunView` for them and for the result views (:mod:`profiler.views`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from profiler import views
from profiler.advice import Suggestion, suggest
from profiler.errors import UsageError
from profiler.leaks import Leak, LeakDetector
from profiler.predict.compare import compare
from profiler.predict.gpus import find_gpu
from profiler.predict.tracked import predict_tracked
from profiler.records import (
    Category,
    Event,
    EventKind,
    Failure,
    LiveStorage,
    ModuleActivity,
    Peaks,
    Sample,
    SessionInfo,
    StepRecord,
)
from profiler.replay import InputRecorder, Replayer
from profiler.report.model import OomReport
from profiler.report.reporter import handle_oom
from profiler.session.writer import SessionWriter
from profiler.tracking import Engine, Options
from profiler.units import format_bytes
from profiler.waterfall import Waterfall, waterfall

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MemoryTracker", "track_memory"]


def track_memory(
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    **options: Any,
) -> MemoryTracker:
    """Measure what occupies memory while the ``with`` block runs.

    Example::

        with track_memory(model, optimizer) as mem:
            for batch in loader:
                loss = model(**batch).loss
                loss.backward(); optimizer.step(); optimizer.zero_grad()
        print(mem)

    See :class:`MemoryTracker` for the options.
    """
    return MemoryTracker(model, optimizer, **options)


class MemoryTracker:
    """Attributes every byte to a category and a module, live, step by step.

    Args:
        model: the model (its parameters are weights, its buffers buffers, its modules named by
            their fully qualified names). ``None`` tracks everything created in the block.
        optimizer: the optimizer (its state is optimizer memory). Optimizers created inside the
            block are picked up at their first step.
        mode: ``"exact"`` (storage ledger), ``"fast"`` (hooks + allocator counter) or ``"auto"``
            (fast on CUDA, exact elsewhere).
        device: the device to account for; by default the model's, else CUDA if it is already
            initialised, else the CPU.
        name: the session's name in the stream and in ``gpumem top`` (default: the script's name).
        stream: publish the session to ``$GPUMEM_HOME`` for ``gpumem top``.
        home: the stream's directory (default ``$GPUMEM_HOME`` or the per-user cache).
        capacity: a simulated device size ("24GB", or bytes): exceeding it raises
            :class:`~profiler.errors.SimulatedOutOfMemoryError`.
        gpu: a GPU from the catalogue ("rtx4090") whose memory is the simulated capacity.
        rounding: charge each storage rounded up to this many bytes (default 512 on CUDA, else 1).
        leaks: run the leak detector on step ends.
        max_samples: bound on the samples kept in memory (older ones are thinned, never all lost).
        max_steps: bound on the step records kept, likewise.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        mode: str = "auto",
        device: torch.device | str | int | None = None,
        name: str | None = None,
        stream: bool = True,
        home: str | os.PathLike[str] | None = None,
        capacity: str | int | None = None,
        gpu: str | None = None,
        rounding: int | None = None,
        leaks: bool = True,
        max_samples: int = 50_000,
        max_steps: int = 20_000,
    ) -> None:
        if model is not None and not isinstance(model, torch.nn.Module):
            raise UsageError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        catalogued = None
        if gpu is not None:
            spec = find_gpu(gpu)
            catalogued = (spec.name, spec.memory_bytes)
        options = Options.validated(
            mode=mode,
            device=device,
            name=name,
            stream=stream,
            home=home,
            capacity=capacity,
            gpu=catalogued,
            rounding=rounding,
            leaks=leaks,
            max_samples=max_samples,
            max_steps=max_steps,
        )
        self.requested_mode = mode
        self._engine = Engine(options, model, optimizer)
        self._state = self._engine.state
        self._leak_detector: LeakDetector | None = None
        self._inputs = InputRecorder()
        #: The OOM post-mortem, once one was written (see :mod:`profiler.report`).
        self.oom_report: OomReport | None = None

    # ================================================================== the block

    def __enter__(self) -> MemoryTracker:
        engine = self._engine
        engine.enter(self)
        self._inputs = InputRecorder.watching(self._state.model)
        try:
            self._start_observers()
            engine.start_recording()
        except BaseException:
            engine.exit(None)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        engine = self._engine
        engine.exit(exc)
        self._inputs.detach()
        self._predict()
        if isinstance(exc, torch.OutOfMemoryError):
            self._report_oom(exc)
        engine.history.emit(
            Event(time.time(), self._state.step, EventKind.END, "session ended", {})
        )
        engine.history.notify("on_close", self, exc)
        return False

    def _start_observers(self) -> None:
        engine = self._engine
        options = engine.options
        if options.stream:
            try:
                writer = SessionWriter.for_run(self, home=options.home)
                self._state.session_dir = writer.directory
                engine.history.observers.append(writer)
            except Exception as error:
                engine.guard.warn_once(
                    "stream", f"session stream is off ({type(error).__name__}: {error})"
                )
        if options.leaks:
            self._leak_detector = LeakDetector()
            engine.history.observers.append(self._leak_detector)
        for observer in list(engine.history.observers):
            engine.history.call(observer, "on_start", self)

    def _predict(self) -> None:
        state = self._state
        optimizers = state.optimizers()
        # No cache seen while the model ran: none was kept, so none is predicted.
        kv_tokens = state.kv_tokens
        if kv_tokens is None and state.observed_batch is not None:
            kv_tokens = 0
        try:
            predicted = predict_tracked(
                state.model,
                optimizers[0] if optimizers else None,
                batch=state.observed_batch,
                seq=state.observed_seq,
                training=state.saw_backward,
                autocast_dtype=state.autocast_dtype,
                rounding=state.rounding,
                kv_tokens=kv_tokens,
            )
        except Exception as error:
            self._engine.guard.warn_once(
                "predict", f"predictions failed ({type(error).__name__}: {error})"
            )
            return
        for category in state.predicted:
            value = predicted.get(category)
            state.predicted[category] = None if value is None else int(value)

    def _report_oom(self, exc: BaseException) -> None:
        try:
            self.oom_report = handle_oom(self, exc, self._replay())
        except Exception as error:
            self._engine.guard.warn_once(
                "oom", f"OOM report failed ({type(error).__name__}: {error})"
            )

    # ================================================================== control

    def step(self) -> None:
        """End a step by hand (inference loops; training steps end at ``optimizer.step()``)."""
        self._engine.step()

    def mark_kv_cache(self, obj: Any) -> None:
        """Count the tensors held by ``obj`` (a cache object, tuple or tensor) as KV cache."""
        self._engine.known.mark_kv_cache(obj)

    def hunt(self, steps: int) -> None:
        """Record creation sites of every storage for ``steps`` steps (exact ledger on in fast
        mode)."""
        self._engine.hunt(steps)

    def emit(self, event: Event) -> None:
        """Record an event and pass it to the observers (the stream writes it)."""
        self._engine.history.emit(event)

    def add_observer(self, observer: Any) -> None:
        """Feed ``observer`` samples, step records and events (any of its ``on_*`` methods)."""
        self._engine.add_observer(observer)

    # ================================================================== RunView

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
        return list(self._engine.history.steps.items)

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

    # ================================================================== results

    def suggestions(self, capacity: str | int | None = None) -> list[Suggestion]:
        """Ranked changes that would make this run fit in ``capacity`` (default: the device's),
        each replayed on fake tensors (:mod:`profiler.replay`)."""
        return suggest(self, capacity=capacity, replay=self._replay())

    def _replay(self) -> Replayer | None:
        state = self._state
        optimizers = state.optimizers()
        return Replayer.for_run(self, self._inputs, optimizers[0] if optimizers else None)

    def leaks(self) -> list[Leak]:
        """Leaks confirmed so far (empty when the detector is off or found none)."""
        detector = self._leak_detector
        return list(detector.leaks) if detector is not None else []

    def breakdown(self) -> pd.DataFrame:
        """One row per category: bytes current, peak (of that category), at_peak, predicted."""
        return views.breakdown(self)

    def timeline(self) -> pd.DataFrame:
        """One row per sample: time, step, phase, module, one column per category, total."""
        return views.timeline(self)

    def modules(self) -> pd.DataFrame:
        """One row per module FQN (see :func:`profiler.views.modules` for the columns)."""
        return views.modules(self)

    def top_modules(self, limit: int = 10) -> list[tuple[str, int]]:
        """The ``limit`` modules that save the most activation bytes in a step (no pandas)."""
        return views.top_modules(self, limit)

    def compare(self) -> pd.DataFrame:
        """Predicted vs measured per category, with the likely cause of each gap in words."""
        return compare(self.breakdown(), context=views.compare_context(self))

    def waterfall(self) -> Waterfall:
        """NVML → reserved → allocated → categories, for this tracker's device."""
        return waterfall(self)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary of the session (written to the stream at the end)."""
        return views.summary(self)

    def table(self) -> str:
        """The readable table: category, current, peak, at peak, predicted, error %."""
        extra = None
        if self._state.device.type == "cuda":
            try:
                extra = self.waterfall().lines()
            except Exception:  # noqa: BLE001 - the waterfall is extra; the table stands without
                extra = None
        return views.table(self, extra)

    def __repr__(self) -> str:
        return (
            f"<MemoryTracker {self.name!r} mode={self.mode} device={self.device} "
            f"peak={format_bytes(self.peak_bytes)}>"
        )

    def __str__(self) -> str:
        return self.table()
