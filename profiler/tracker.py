"""``track_memory`` and :class:`MemoryTracker`: the facade over the engine and its observers.

The engine (:mod:`profiler.tracking`) measures, exactly (a dispatch-level ledger) or fast (an
allocator counter at boundaries); this module wires it to its observers (the session stream, the
leak detector, the OOM report) and answers :class:`~profiler.run.RunView` for them and the views.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from profiler import saved, views
from profiler.advice import Suggestion, suggest
from profiler.errors import UsageError
from profiler.integrations.unwrap import ddp_copies_gradients, unwrap_model, unwrap_optimizer
from profiler.leaks import Leak, LeakDetector
from profiler.notebook import TrackerHtml
from profiler.predict.gpus import find_gpu
from profiler.predict.honest import HonestCompare
from profiler.predict.tracked import predict_tracked
from profiler.records import Event, EventKind, StepRecord
from profiler.replay import InputRecorder, Replayer
from profiler.report.model import OomReport
from profiler.report.reporter import handle_oom
from profiler.run import Observer
from profiler.session.atomic import write_atomic
from profiler.session.writer import SessionWriter
from profiler.tracking import Engine, Options
from profiler.tracking.view import EngineView
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


class MemoryTracker(EngineView, TrackerHtml):
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
        history: record the CUDA allocator's history for :meth:`export_memory_viz` (``True``:
            its last 100,000 events, or that many); about 2 µs per allocation while on.
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
        history: bool | int = False,
    ) -> None:
        self._ddp_bucket_copy = ddp_copies_gradients(model)
        # the real model and optimizer behind DDP / FSDP / torch.compile / AcceleratedOptimizer
        model, optimizer = unwrap_model(model), unwrap_optimizer(optimizer)
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
            history=history,
        )
        self.requested_mode = mode
        super().__init__(Engine(options, model, optimizer))
        self._leak_detector: LeakDetector | None = None
        self._stream: SessionWriter | None = None
        self._inputs = InputRecorder()
        #: The OOM post-mortem, once one was written (see :mod:`profiler.report`).
        self.oom_report: OomReport | None = None
        self._predictions = _Predictions(self)
        self._honest = HonestCompare()

    # ================================================================== the block

    def __enter__(self) -> MemoryTracker:
        engine = self._engine
        engine.enter(self)
        try:
            self._inputs = InputRecorder.watching(self._state.model, self._state.optimizers())
            self._start_observers()
            self._predictions.predict("entry")  # weights, gradients, optimizer state: known now
            engine.start_recording()
        except BaseException as error:  # a Ctrl-C inside gpumem's own enter included
            self._inputs.detach()
            try:
                engine.exit(None)
            finally:
                self._close_observers(error)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        interrupted: BaseException | None = None
        try:
            engine = self._engine
            self._inputs.detach()  # first: nothing below can leave its hooks on the model
            engine.exit(exc)
            self._predictions.predict("end")
            if isinstance(exc, torch.OutOfMemoryError):
                self._report_oom(exc)
            engine.history.emit(
                Event(time.time(), self._state.step, EventKind.END, "session ended", {})
            )
        except BaseException as error:  # a Ctrl-C inside gpumem's own exit: still close
            interrupted = error
        self._close_observers(exc if interrupted is None else interrupted)
        if interrupted is not None:
            raise interrupted
        return False

    def _close_observers(self, exc: BaseException | None) -> None:
        """``on_close`` to every observer; the stream is closed (its thread stopped, its summary
        written) even if that is interrupted."""
        try:
            self._engine.history.notify("on_close", self, exc)
        finally:
            if self._stream is not None:
                self._stream.on_close(self, exc)  # nothing to do if it closed already

    def _start_observers(self) -> None:
        engine = self._engine
        options = engine.options
        engine.history.observers.append(self._predictions)
        if options.stream:
            try:
                writer = self._stream = SessionWriter.for_run(self, home=options.home)
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

    def update_predictions(self) -> None:
        """Predict each category again from what the run has shown so far (also done at exit)."""
        self._predictions.predict("update")

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
        """Measured vs predicted (replayed, else formulas) vs a reference, per category."""
        return self._honest.table(self, self._replay, self._state.optimizers(), self._state.active)

    def waterfall(self) -> Waterfall:
        """NVML → reserved → allocated → categories, for this tracker's device."""
        return waterfall(self)

    def metrics(self) -> dict[str, int]:
        """A flat ``{"gpumem/<name>": number}`` dict for loggers (see :func:`views.metrics`)."""
        return views.metrics(self, leaks=len(self.leaks()))

    def to_json(self) -> str:
        """The whole result (facts, samples, steps, peaks, modules, failure, leaks) as JSON."""
        document = saved.run_to_dict(self, leaks=[leak.as_dict() for leak in self.leaks()])
        return json.dumps(document, separators=(",", ":"), allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically; ``profiler.load(path)`` reads it back."""
        return saved.save(self, path, leaks=[leak.as_dict() for leak in self.leaks()])

    def plot(self, ax: Any = None) -> Any:
        """The timeline stacked by category, capacity and peak marked (matplotlib axes)."""
        from profiler.plot import plot  # matplotlib: only when a plot is asked for

        return plot(self, ax)

    def export_memory_viz(self, path: str | os.PathLike[str]) -> Path:
        """Write the CUDA allocator snapshot with its recorded history (``history=True``) as the
        pickle PyTorch's memory_viz page opens (https://pytorch.org/memory_viz)."""
        snapshot = self._engine.capture.memory_viz_snapshot()
        if snapshot is None:
            raise UsageError(
                "no allocator history was recorded",
                hint="track_memory(..., history=True) on a CUDA device",
            )
        return write_atomic(path, pickle.dumps(snapshot, protocol=4), mode=0o644)

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


class _Predictions(Observer):
    """The tracker's predictions: made at entry, again once the first step ended (the batch and
    sequence are known) and at exit; each new set goes to the observers (the session stream) as
    a ``prediction`` event, so ``gpumem top`` shows them live."""

    def __init__(self, tracker: MemoryTracker) -> None:
        self.tracker = tracker
        self.sent: dict[str, int | None] | None = None
        self.stepped = False

    def on_step(self, record: StepRecord) -> None:
        if not self.stepped:
            self.stepped = True
            self.predict("step")
            observers = self.tracker._engine.history.observers
            if self in observers:
                observers.remove(self)  # nothing more to do per step

    def predict(self, basis: str) -> None:
        """The formulas' figures from what is known now; ``basis`` is ``"entry"`` (the model and
        optimizer), ``"step"`` (the first step end), ``"end"`` (exit) or ``"update"``."""
        tracker = self.tracker
        state = tracker._state
        optimizers = state.optimizers()
        # an optimizer given at entry means training: its gradients will exist
        training = state.saw_backward or (basis == "entry" and bool(optimizers))
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
                training=training,
                autocast_dtype=state.autocast_dtype,
                rounding=state.rounding,
                kv_tokens=kv_tokens,
                ddp_bucket_copy=tracker._ddp_bucket_copy,
            )
        except Exception as error:
            tracker._engine.guard.warn_once(
                "predict", f"predictions failed ({type(error).__name__}: {error})"
            )
            return
        for category in state.predicted:
            value = predicted.get(category)
            state.predicted[category] = None if value is None else int(value)
        figures = {str(k): v for k, v in state.predicted.items()}
        if figures != self.sent:
            self.sent = figures
            data = {"basis": basis, "predicted": figures, "batch": state.observed_batch,
                    "seq": state.observed_seq, "training": training}  # fmt: skip
            tracker._engine.history.emit(
                Event(time.time(), state.step, EventKind.PREDICTION, "", data)
            )
