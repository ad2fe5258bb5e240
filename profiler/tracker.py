"""``track_memory`` and :class:`MemoryTracker`: hooks in, hooks out, steps and phases.

Two ways to measure feed one ledger (:mod:`profiler.ledger`) and one API:

- **exact** (default on CPU and for fake/meta tensors): a ``TorchDispatchMode`` sees every op's
  outputs and inputs, so every storage is charged once, when created, and released by a weak
  reference when freed. ``saved_tensors_hooks`` tell which temporaries autograd keeps (they become
  activations of the innermost module). Costs a few µs per op: ~2-4x on a step of tiny ops, a few
  percent on a step of big ones (``benchmarks/overhead.py``).
- **fast** (default on CUDA): no per-op interception. Module, gradient and optimizer hooks read an
  allocator counter (CUDA's caching allocator; glibc ``mallinfo2`` on CPU) at boundaries. Known
  tensors (parameters, buffers, ``.grad``, optimizer state, KV cache) are charged exactly through
  the ledger; the rest of the counter's growth is activations during forward and backward and
  temporaries elsewhere.

Where the program is comes from hooks: global module forward hooks (module stack and per-module
peaks), tensor hooks on module outputs and inputs (per-module backward, exact mode), gradient
hooks (``register_post_accumulate_grad_hook``), the autograd engine's end-of-backward callback,
and global optimizer step hooks (a step ends at ``optimizer.step()``, or at :meth:`step`).

Known limits: inside a ``torch.compile``'d region the compiled kernels allocate without going
through Python dispatch, so exact mode sees only what runs eagerly; steps, phases and the known
categories are still measured, and fast mode's counter sees everything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from profiler.errors import TrackingError, UsageError
from profiler.kvcache import cache_positions, cache_tensors, find_caches
from profiler.ledger import (
    ACTIVATIONS,
    BUFFERS,
    GRADIENTS,
    KV_CACHE,
    OPTIMIZER,
    OTHER,
    TEMPORARIES,
    WEIGHTS,
    Ledger,
    StorageEntry,
)
from profiler.records import (
    CATEGORIES,
    AllocatorReading,
    Category,
    Event,
    EventKind,
    Failure,
    FailureSource,
    LiveStorage,
    ModuleActivity,
    NvmlReading,
    Peaks,
    Phase,
    Sample,
    SessionInfo,
    StepRecord,
)
from profiler.units import format_bytes, parse_bytes

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MemoryTracker", "track_memory"]

_MODES = ("auto", "exact", "fast")
_aten = torch.ops.aten
# Ops are compared by id(): an OpOverload's __hash__ runs Python code on every call.
_CAST_OPS = frozenset(
    id(op)
    for op in (_aten._to_copy.default, _aten.to.dtype, _aten._autocast_to_reduced_precision.default)
)
_RESIZE_OPS = frozenset(
    id(op) for op in (_aten.resize_.default, _aten.resize_as_.default, _aten.set_.source_Storage)
)
_graph_task_id = torch._C._current_graph_task_id
_is_compiling = torch.compiler.is_compiling
Tensor = torch.Tensor
# Per-module statistics, one list of ints per module FQN: calls; activation bytes saved by the
# module itself in this step and the most in any step; the same with its descendants; the highest
# total above the starting one during its forward and its backward; the total when it started.
_CALLS, _OWN, _OWN_MAX, _INCL, _INCL_MAX, _FWD_PEAK, _BWD_PEAK, _BASE = range(8)
_STATS_LEN = 8
#: Fast mode reads its counter at every module boundary only when a read costs less than this
#: (CUDA's always qualifies; glibc's mallinfo2 walks the heap and can take 30 us in a big process).
_MODULE_READ_BUDGET = 5e-6
#: Events kept in memory (the session stream on disk has them all).
_MAX_EVENTS = 10_000
_PHASE_CODES = {Phase.IDLE: 0, Phase.FORWARD: 1, Phase.BACKWARD: 2, Phase.OPTIMIZER: 3}


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


class _BoundedLog:
    """An append-only list that halves its resolution when full: bounded memory, whole history."""

    def __init__(self, capacity: int) -> None:
        self.items: list[Any] = []
        self.capacity = max(16, capacity)

    def append(self, item: Any) -> None:
        items = self.items
        items.append(item)
        if len(items) > self.capacity:
            # Keep the recent half at full resolution; thin the older half to every other item.
            half = len(items) // 2
            self.items = items[:half:2] + items[half:]


class _LedgerMode(TorchDispatchMode):
    """Charges every storage an op creates or touches to the ledger (exact mode's hot path).

    Per op: the outputs whose storage is new are charged (temporaries, or weights for autocast's
    casts of weights); inputs whose storage the ledger has never seen existed before the block
    (or came from elsewhere) and are charged as other. Views and in-place results share a known
    storage and cost one dict lookup.
    """

    def __init__(self, tracker: MemoryTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.ledger = tracker.ledger
        self.entries = tracker.ledger.entries
        self.wanted = tracker._wanted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **kwargs) if kwargs else func(*args)
        tracker = self.tracker
        if not tracker._exact_on:
            return out
        try:
            if tracker._phase_code != 2 and _graph_task_id() != -1:
                tracker._enter_backward()
            entries = self.entries
            wanted = self.wanted
            for arg in args:
                if isinstance(arg, Tensor):
                    if (
                        wanted is None or wanted(arg)
                    ) and arg.untyped_storage()._cdata not in entries:
                        self.ledger.add_tensor(arg, OTHER)
                elif type(arg) is list or type(arg) is tuple:
                    for item in arg:
                        if (
                            isinstance(item, Tensor)
                            and (wanted is None or wanted(item))
                            and item.untyped_storage()._cdata not in entries
                        ):
                            self.ledger.add_tensor(item, OTHER)
            op = id(func)
            if isinstance(out, Tensor):
                if wanted is None or wanted(out):
                    if out.untyped_storage()._cdata not in entries:
                        cat = TEMPORARIES
                        if op in _CAST_OPS and self.ledger.category_of(args[0]) == WEIGHTS:
                            cat = WEIGHTS  # autocast's copy of a weight scales with the weights
                        self.ledger.add_tensor(out, cat)
                    elif op in _RESIZE_OPS or (kwargs and "out" in kwargs):
                        self.ledger.resize(out)
            elif type(out) is tuple or type(out) is list:
                for item in out:
                    if isinstance(item, Tensor) and (wanted is None or wanted(item)):
                        if item.untyped_storage()._cdata not in entries:
                            self.ledger.add_tensor(item, TEMPORARIES)
                        elif kwargs and "out" in kwargs:
                            self.ledger.resize(item)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError, TypeError):
            # A tensor without a plain storage (sparse, nested, a wrapper subclass): go the
            # careful way for this op.
            self._careful(args, out)
        except Exception as exc:  # never break the user's program
            tracker._fail("exact ledger", exc)
        return out

    def _careful(self, args: Any, out: Any) -> None:
        ledger = self.ledger
        wanted = self.wanted
        try:
            for tensor in _tensors_in(args):
                if wanted is None or wanted(tensor):
                    ledger.add_tensor(tensor, OTHER)
            for tensor in _tensors_in(out):
                if wanted is None or wanted(tensor):
                    ledger.add_tensor(tensor, TEMPORARIES)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            self.tracker._fail("exact ledger", exc)


def _device_filter(device: torch.device | None) -> Callable[[torch.Tensor], bool] | None:
    """A predicate for the tensors on ``device``; ``None`` when every tensor qualifies."""
    if device is None:
        return None
    if device.type == "cuda":
        index = device.index
        if index is None:
            return lambda t: t.is_cuda
        return lambda t: t.is_cuda and t.get_device() == index
    if device.type == "meta":
        return lambda t: t.is_meta
    if device.type == "cpu":
        return lambda t: t.is_cpu
    kind = device.type
    return lambda t: t.device.type == kind


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
        if mode not in _MODES:
            raise UsageError(f"unknown mode {mode!r}", hint="use 'auto', 'exact' or 'fast'")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise UsageError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self._model_ref = weakref.ref(model) if model is not None else None
        self._optimizer_refs: list[weakref.ref[torch.optim.Optimizer]] = (
            [weakref.ref(optimizer)] if optimizer is not None else []
        )
        self.requested_mode = mode
        self._device_arg = device
        self.name = name or _default_name()
        self._stream = stream
        self._home = home
        self._leaks_enabled = leaks
        self.gpu_name: str | None = None
        self.capacity: int | None = None
        if gpu is not None:
            from profiler.predict.gpus import find_gpu

            spec = find_gpu(gpu)
            self.gpu_name = spec.name
            self.capacity = spec.memory_bytes
        if capacity is not None:
            self.capacity = parse_bytes(capacity)
        self._rounding_arg = rounding
        self._max_samples = max_samples
        self._max_steps = max_steps

        # Facts about the run, filled as they are seen.
        self.device: torch.device = torch.device("cpu")
        self.mode = "exact"
        self.rounding = 1
        self.model_class: str | None = type(model).__name__ if model is not None else None
        self.param_count: int | None = None
        self.trainable_param_count: int | None = None
        self.optimizer_class: str | None = type(optimizer).__name__ if optimizer else None
        self.observed_batch: int | None = None
        self.observed_seq: int | None = None
        #: Positions per sequence held by the largest KV cache seen (``None``: no cache seen).
        self.kv_tokens: int | None = None
        #: Whether a prompt was fed to a KV cache that already held positions. Until then a
        #: growing cache is a generation in progress (steps may end per token), not a leak.
        self.kv_cache_reused = False
        self.autocast_dtype: torch.dtype | None = None
        self.checkpointing: bool | None = None
        self.attention_impl: str | None = None
        self.pid = os.getpid()
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.session_dir: Any = None
        self.oom_report: Any = None
        self.failure: Failure | None = None
        self.predicted: dict[Category, int | None] = {c: None for c in CATEGORIES}
        self.record_sites = False
        self.hunting = False

        self.ledger = Ledger()
        self._samples = _BoundedLog(max_samples)
        self._steps = _BoundedLog(max_steps)
        self.events: list[Event] = []
        self._observers: list[Any] = []
        self._leak_detector: Any = None
        self._handles: list[Any] = []
        self._tensor_handles: list[Any] = []
        self._contexts: list[Any] = []
        self._mode_ctx: _LedgerMode | None = None
        self._warned: set[str] = set()
        self._disabled: set[str] = set()
        self._active = False
        self._exact_on = False
        self._fast = False  # fast mode's counter path is live (fast mode, no leak hunt running)
        self._on_cuda = False
        self._phase = Phase.IDLE
        self._phase_code = 0
        self._step = 0
        self._step_start = 0.0
        self._saw_backward = False
        self._module_stack: list[str] = []
        self._backward_stack: list[str] = []
        self._names: dict[int, str] = {}
        self._module_stats: dict[str, list[int]] = {}
        self._kv_refs: list[weakref.ref[Any]] = []
        self._oom_observer: Any = None
        self._hooked_params: set[int] = set()
        self._grad_params: list[weakref.ref[torch.Tensor]] = []
        self._module_frames = True  # per-module peaks (off in fast mode with a slow counter)
        self._hunt_steps_left = 0
        self._backward_callback_queued = False
        self._thread = threading.get_ident()
        self._read_counter: Callable[[], tuple[int, int | None]] | None = None
        self._read_current: Callable[[], int] = lambda: 0
        self._counter_base = 0
        self._known_base = 0
        self._other_base = 0
        self._fast_offset = 0
        self._peak_base = 0
        self._last_nvml_time = 0.0
        self._last_nvml: NvmlReading | None = None
        self._wanted: Callable[[torch.Tensor], bool] | None = None

    # ================================================================== context manager

    def __enter__(self) -> MemoryTracker:
        if self._active:
            raise TrackingError("this tracker is already active", hint="use one `with` per block")
        model = self.model
        self.device = self._resolve_device(model)
        self.mode = self._resolve_mode()
        self.rounding = self._rounding_arg or (512 if self.device.type == "cuda" else 1)
        self._wanted = _device_filter(self.device)
        self._on_cuda = self.device.type == "cuda"
        self.ledger = Ledger(
            rounding=self.rounding, capacity=self.capacity, on_overflow=self._on_overflow
        )
        self._samples = _BoundedLog(self._max_samples)
        self._steps = _BoundedLog(self._max_steps)
        self.events = []
        self._module_stats = {}
        self._step = 0
        self.failure = None
        self.oom_report = None
        self._saw_backward = False
        self._oom_observer = None
        self.kv_tokens = None
        self.kv_cache_reused = False
        self.start_time = time.time()
        self._step_start = time.perf_counter()
        self._active = True
        try:
            self._name_modules(model)
            self._register_known()
            self._install()
            self._attach_oom_observer()
            self._start_observers()
            self._emit(Event(time.time(), 0, EventKind.START, f"tracking {self.name}", {}))
            self._sample()
        except BaseException:
            self._uninstall()
            self._active = False
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        try:
            if self._active:
                self._scan_kv_caches()
                self._scan_optimizers()
                self._sample()
        except Exception as error:
            self._fail("final sample", error)
        finally:
            self._uninstall()
            self._active = False
            self._fast = False
            self.end_time = time.time()
        self._fold_step_modules()
        self._predict()
        if isinstance(exc, torch.OutOfMemoryError):
            self._handle_oom(exc)
        self._emit(Event(time.time(), self._step, EventKind.END, "session ended", {}))
        self._notify("on_close", self, exc)
        return False

    @property
    def model(self) -> torch.nn.Module | None:
        """The tracked model while it is alive (the tracker holds it weakly)."""
        return self._model_ref() if self._model_ref is not None else None

    def _is_wanted(self, tensor: torch.Tensor) -> bool:
        wanted = self._wanted
        return wanted is None or wanted(tensor)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (ref() for ref in self._optimizer_refs) if o is not None]

    def _resolve_device(self, model: torch.nn.Module | None) -> torch.device:
        if self._device_arg is not None:
            device = self._device_arg
            if isinstance(device, int):
                return torch.device("cuda", device)
            return torch.device(device)
        if model is not None:
            for param in model.parameters():
                return param.device
            for buffer in model.buffers():
                return buffer.device
        from profiler.backends import cuda

        if cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _resolve_mode(self) -> str:
        if self.requested_mode != "auto":
            if self.requested_mode == "fast" and self.capacity is not None:
                raise UsageError(
                    "a simulated capacity needs exact mode",
                    hint="use mode='exact' (or 'auto') with capacity= or gpu=",
                )
            return self.requested_mode
        if self.capacity is not None:
            return "exact"
        return "fast" if self.device.type == "cuda" else "exact"

    # ================================================================== registration

    def _name_modules(self, model: torch.nn.Module | None) -> None:
        self._names = {}
        if model is None:
            return
        for fqn, module in model.named_modules():
            self._names.setdefault(id(module), fqn or type(model).__name__)
        self._root_id = id(model)

    def _register_known(self) -> None:
        """Charge what exists already: weights, buffers, gradients, optimizer state."""
        ledger = self.ledger
        model = self.model
        if model is not None:
            params = 0
            trainable = 0
            seen: set[int] = set()
            for fqn, module in model.named_modules():
                ledger.module = fqn or type(model).__name__
                for param in module.parameters(recurse=False):
                    if id(param) not in seen:
                        seen.add(id(param))
                        params += param.numel()
                        trainable += param.numel() if param.requires_grad else 0
                    if self._is_wanted(param):
                        ledger.claim(param, WEIGHTS)
                    if param.grad is not None and self._is_wanted(param.grad):
                        ledger.claim(param.grad, GRADIENTS)
                for buffer in module.buffers(recurse=False):
                    if self._is_wanted(buffer):
                        ledger.claim(buffer, BUFFERS, only_from=(OTHER, TEMPORARIES))
            ledger.module = None
            self.param_count = params
            self.trainable_param_count = trainable
            config = getattr(model, "config", None)
            self.attention_impl = getattr(config, "_attn_implementation", None)
            for attribute in ("is_activation_checkpointing", "is_gradient_checkpointing"):
                if hasattr(type(model), attribute):
                    self.checkpointing = bool(getattr(model, attribute))
                    break
        self._scan_optimizers()
        if self.mode == "fast":
            self._fast = True
            self._known_base = sum(ledger.current)
            self._read_counter = self._make_counter()
            read_counter = self._read_counter
            self._read_current = getattr(read_counter, "current_only", None) or (
                lambda: read_counter()[0]
            )
            self._counter_base, peak = self._read_counter()
            self._peak_base = peak or 0
            self._module_frames = self._on_cuda or self._counter_cost() < _MODULE_READ_BUDGET
            self._other_base = max(self._counter_base - self._known_base, 0)
            self._fast_offset = self._known_base + self._other_base - self._counter_base

    def _scan_optimizers(self, *, grads: bool = True, state: bool = True) -> None:
        """Charge each tracked optimizer's state and the gradients of parameters not hooked."""
        ledger = self.ledger
        entries = ledger.entries
        hooked = self._hooked_params
        for optimizer in self._optimizers():
            if grads and len(hooked) < sum(len(g["params"]) for g in optimizer.param_groups):
                for group in optimizer.param_groups:
                    for param in group["params"]:
                        grad = param.grad
                        if grad is not None and id(param) not in hooked and self._is_wanted(grad):
                            ledger.claim(grad, GRADIENTS)
            for param_state in optimizer.state.values() if state else ():
                if type(param_state) is not dict:
                    continue
                for value in param_state.values():
                    if not isinstance(value, Tensor):
                        continue
                    try:
                        entry = entries.get(value.untyped_storage()._cdata)
                    except (RuntimeError, NotImplementedError, TypeError):
                        continue
                    # Steady state: every state tensor is known already; one lookup each.
                    if (entry is None or entry.cat != OPTIMIZER) and self._is_wanted(value):
                        ledger.claim(value, OPTIMIZER)

    def _counter_cost(self) -> float:
        """Seconds one counter read takes here (glibc's walks every arena: slow on big heaps)."""
        counter = self._read_counter
        assert counter is not None
        start = time.perf_counter()
        for _ in range(8):
            counter()
        return (time.perf_counter() - start) / 8

    def _make_counter(self) -> Callable[[], tuple[int, int | None]]:
        """The allocator counter fast mode reads at boundaries: (current, peak or None)."""
        if self.device.type == "cuda":
            from profiler.backends import cuda

            index = self.device.index

            def cuda_counter() -> tuple[int, int | None]:
                reading = cuda.allocator_reading(index)
                if reading is None:
                    return 0, None
                return reading.allocated, reading.peak_allocated

            return cuda_counter
        from profiler.backends.host import heap_bytes_reader

        reader = heap_bytes_reader()
        if reader is None:
            self._warn_once(
                "no-counter",
                "fast mode has no allocator counter on this platform (no glibc mallinfo2): "
                "only parameters, gradients, optimizer state and KV cache are measured",
            )
            return lambda: (sum(self.ledger.current), None)

        def heap_counter() -> tuple[int, int | None]:
            return reader(), None

        heap_counter.current_only = reader  # type: ignore[attr-defined]
        return heap_counter

    # ================================================================== hooks in, hooks out

    def _install(self) -> None:
        import torch.optim.optimizer as optim_mod
        from torch.nn.modules import module as module_mod

        fast = self.mode == "fast"
        self._handles.append(
            module_mod.register_module_forward_pre_hook(
                self._fast_pre if fast else self._forward_pre
            )
        )
        self._handles.append(
            module_mod.register_module_forward_hook(
                self._fast_post if fast else self._forward_post, always_call=True
            )
        )
        self._handles.append(optim_mod.register_optimizer_step_pre_hook(self._optimizer_pre))
        self._handles.append(optim_mod.register_optimizer_step_post_hook(self._optimizer_post))
        model = self.model
        if model is not None:
            self._handles.append(model.register_forward_pre_hook(self._root_pre, with_kwargs=True))
            self._handles.append(
                model.register_forward_hook(self._root_post, with_kwargs=True, always_call=True)
            )
            for param in model.parameters():
                if param.requires_grad:
                    # Fast mode claims gradients once, at the backward's end (one scan instead
                    # of a Python call per parameter); exact mode as each one lands.
                    if self.mode == "exact":
                        self._handles.append(
                            param.register_post_accumulate_grad_hook(self._grad_accumulated)
                        )
                    self._hooked_params.add(id(param))
                    self._grad_params.append(weakref.ref(param))
        if self.mode == "exact":
            self._start_exact()

    def _start_exact(self) -> None:
        if self._mode_ctx is not None:
            return
        saved = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        saved.__enter__()
        self._contexts.append(saved)
        self._mode_ctx = _LedgerMode(self)
        self._mode_ctx.__enter__()
        self._exact_on = True
        self._fast = False

    def _stop_exact(self) -> None:
        self._exact_on = False
        self._fast = self.mode == "fast" and self._active
        if self._mode_ctx is not None:
            try:
                self._mode_ctx.__exit__(None, None, None)
            except Exception as error:
                self._fail("exact ledger exit", error)
            self._mode_ctx = None
        while self._contexts:
            try:
                self._contexts.pop().__exit__(None, None, None)
            except Exception as error:
                self._fail("saved tensor hooks exit", error)

    def _uninstall(self) -> None:
        if self._oom_observer is not None:
            with contextlib.suppress(Exception):
                self._oom_observer.detach()
        self._stop_exact()
        self._hooked_params.clear()
        self._grad_params.clear()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._remove_tensor_handles()
        self._module_stack.clear()
        self._backward_stack.clear()
        self.ledger.frames.clear()

    def _remove_tensor_handles(self) -> None:
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles.clear()

    # ================================================================== failure policy

    def _fail(self, part: str, error: BaseException) -> None:
        """A hook failed: warn once, switch that part off, never break the user's program."""
        if part in self._disabled:
            return
        self._disabled.add(part)
        if part.startswith("exact"):
            self._exact_on = False
        warnings.warn(
            f"gpumem: {part} failed and was switched off ({type(error).__name__}: {error}); "
            "the rest of tracking goes on",
            RuntimeWarning,
            stacklevel=3,
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"gpumem: {message}", RuntimeWarning, stacklevel=3)

    # ================================================================== module hooks

    def _module_name(self, module: torch.nn.Module) -> str:
        name = self._names.get(id(module))
        if name is None:
            name = type(module).__name__
        return name

    def _fast_pre(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        """Fast mode's module pre-hook: the lean path (one counter read, no per-op work)."""
        if _is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        if not self._fast or "module hooks" in self._disabled:
            return self._forward_pre(module, args)  # a leak hunt runs the exact ledger
        if threading.get_ident() != self._thread:
            return None
        try:
            stack = self._module_stack
            if not stack and self._phase_code != 1 and _graph_task_id() == -1:
                self._set_phase(Phase.FORWARD)
            name = self._names.get(id(module)) or type(module).__name__
            stack.append(name)
            stats = self._module_stats.get(name)
            if stats is None:
                stats = self._module_stats[name] = [0] * _STATS_LEN
            stats[_CALLS] += 1
            if self._module_frames:
                current = self._read_current()
                total = current + self._fast_offset
                ledger = self.ledger
                if total > ledger.window_peak:
                    ledger.observe_total(total, self._fast_split(current))
                ledger.frames.append(total)
                stats[_BASE] = total
        except Exception as error:
            self._fail("module hooks", error)
        return None

    def _fast_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Fast mode's module post-hook: the lean path."""
        if _is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        if not self._fast or "module hooks" in self._disabled:
            return self._forward_post(module, args, output)
        stack = self._module_stack
        if not stack or threading.get_ident() != self._thread:
            return None
        try:
            name = stack.pop()
            if self._module_frames:
                current = self._read_current()
                total = current + self._fast_offset
                ledger = self.ledger
                if total > ledger.window_peak:
                    ledger.observe_total(total, self._fast_split(current))
                frames = ledger.frames
                peak = max(frames.pop(), total) if frames else total
                if frames and peak > frames[-1]:
                    frames[-1] = peak
                stats = self._module_stats[name]
                base = stats[_BASE]
                if peak - base > stats[_FWD_PEAK]:
                    stats[_FWD_PEAK] = peak - base
                if total > base:
                    # what the forward left behind is what it saved (children included)
                    stats[_OWN] += total - base
                    stats[_INCL] += total - base
            if not stack and not self._backward_stack and _graph_task_id() == -1:
                self._set_phase(Phase.IDLE)
        except Exception as error:
            self._fail("module hooks", error)
        return None

    def _forward_pre(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if _is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        if "module hooks" in self._disabled or threading.get_ident() != self._thread:
            return
        try:
            name = self._module_name(module)
            stack = self._module_stack
            if not stack and self._phase_code != 1 and torch._C._current_graph_task_id() == -1:
                self._set_phase(Phase.FORWARD)
            stack.append(name)
            ledger = self.ledger
            ledger.module = name
            stats = self._module_stats.get(name)
            if stats is None:
                stats = self._module_stats[name] = [0] * _STATS_LEN
            stats[_CALLS] += 1
            if not self._module_frames:
                return
            total = self._fast_read() if self._fast else ledger.total
            ledger.frames.append(total)
            stats[_BASE] = total
            if self.mode == "exact" and torch.is_grad_enabled():
                self._hook_inputs(name, args)
        except Exception as error:
            self._fail("module hooks", error)

    def _forward_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if _is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        if "module hooks" in self._disabled or threading.get_ident() != self._thread:
            return
        try:
            stack = self._module_stack
            if not stack:
                return
            name = stack.pop()
            ledger = self.ledger
            stats = self._module_stats.get(name) if self._module_frames else None
            if stats is not None:
                total = self._fast_read() if self._fast else ledger.total
                peak = ledger.pop_frame() if ledger.frames else 0
                base = stats[_BASE]
                if peak - base > stats[_FWD_PEAK]:
                    stats[_FWD_PEAK] = peak - base
                if self._fast and total > base:
                    # fast mode: what the forward left behind is what it saved (children included)
                    stats[_OWN] += total - base
                    stats[_INCL] += total - base
            ledger.module = stack[-1] if stack else None
            if self.mode == "exact" and torch.is_grad_enabled():
                self._hook_outputs(name, output)
            if not stack and not self._backward_stack and torch._C._current_graph_task_id() == -1:
                self._set_phase(Phase.IDLE)
        except Exception as error:
            self._fail("module hooks", error)

    def _root_pre(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict) -> None:
        if _is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        try:
            seq = self._observe_inputs(args, kwargs)
            for value in find_caches(kwargs):
                if seq is not None and seq > 1 and not self.kv_cache_reused:
                    # a prompt (several tokens) fed to a cache that already holds some: the
                    # cache was not reset between generations (or a conversation goes on)
                    self.kv_cache_reused = cache_positions(value) > 0
                self.mark_kv_cache(value)
        except Exception as error:
            self._fail("input inspection", error)

    def _root_post(self, module: torch.nn.Module, args: Any, kwargs: dict, output: Any) -> None:
        if _is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        try:
            if self.mode == "fast" and not self._exact_on and torch.is_grad_enabled():
                # fast mode's one backward hook: the root output's gradient starts the backward
                self._hook_outputs(self._module_name(module), output)
            for cache in find_caches(output):
                self.mark_kv_cache(cache)
            self._scan_kv_caches()
        except Exception as error:
            self._fail("kv cache detection", error)

    def _observe_inputs(self, args: tuple[Any, ...], kwargs: dict) -> int | None:
        """The root model's batch (latest call) and sequence length (longest call) from its input.

        The input is the first tensor argument, or ``input_ids`` / ``inputs_embeds``; its dim 0 is
        the batch, and dim 1 the sequence for token ids (integers) or for 3-d float inputs.
        Returns this call's sequence length (``None`` where there is none).
        """
        candidates = list(args) + [kwargs.get("input_ids"), kwargs.get("inputs_embeds")]
        for value in candidates:
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                self.observed_batch = int(value.shape[0])
                if (value.dim() == 2 and not value.is_floating_point()) or value.dim() >= 3:
                    seq = int(value.shape[1])
                    self.observed_seq = max(self.observed_seq or 0, seq)
                    return seq
                return None
        return None

    def _hook_outputs(self, name: str, output: Any) -> None:
        """Tensor hooks on a module's outputs: their gradient marks the module's backward start."""
        for tensor in _tensors_in(output):
            if tensor.requires_grad:
                handle = tensor.register_hook(_BackwardMark(self, name, True))
                self._tensor_handles.append(handle)
                return

    def _hook_inputs(self, name: str, args: tuple[Any, ...]) -> None:
        """Tensor hooks on a module's inputs: their gradient marks the module's backward end."""
        for tensor in _tensors_in(args):
            if tensor.requires_grad:
                handle = tensor.register_hook(_BackwardMark(self, name, False))
                self._tensor_handles.append(handle)
                return

    def _backward_mark(self, name: str, starting: bool) -> None:
        if self._phase_code != 2:
            self._enter_backward()
        ledger = self.ledger
        stack = self._backward_stack
        if starting:
            stack.append(name)
            ledger.push_frame()
            ledger.module = name
            stats = self._module_stats.get(name)
            if stats is not None:
                stats[_BASE] = ledger.total
        elif name in stack:
            while stack:
                done = stack.pop()
                self._close_backward_frame(done)
                if done == name:
                    break
            ledger.module = stack[-1] if stack else None

    def _close_backward_frame(self, name: str) -> None:
        ledger = self.ledger
        peak = ledger.pop_frame() if ledger.frames else 0
        stats = self._module_stats.get(name)
        if stats is not None and peak - stats[_BASE] > stats[_BWD_PEAK]:
            stats[_BWD_PEAK] = peak - stats[_BASE]

    # ================================================================== autograd hooks

    def _pack(self, tensor: torch.Tensor) -> Any:
        """Saved-tensor pack hook: a temporary autograd keeps is an activation of this module.

        It stays one while autograd holds it: the returned :class:`_Saved` wrapper goes when the
        graph releases it, and with the last one the storage (if still alive, say the user's
        input ids) is a temporary again.
        """
        if not self._exact_on:
            return tensor
        try:
            ledger = self.ledger
            entry = ledger.entries.get(tensor.untyped_storage()._cdata)
            if entry is None:
                return tensor
            if entry.cat == ACTIVATIONS:
                entry.saves += 1
                return _Saved(tensor, entry, ledger)
            if entry.cat == TEMPORARIES:
                module = ledger.module
                ledger.reclassify(entry, ACTIVATIONS)
                entry.saves = 1
                entry.module = module
                if module is not None:
                    stats = self._module_stats.get(module)
                    if stats is not None:
                        stats[_OWN] += entry.nbytes
                    for outer in self._module_stack:
                        outer_stats = self._module_stats.get(outer)
                        if outer_stats is not None:
                            outer_stats[_INCL] += entry.nbytes
                return _Saved(tensor, entry, ledger)
        except Exception as error:
            self._fail("exact saved-tensor hook", error)
        return tensor

    def _enter_backward(self) -> None:
        self._saw_backward = True
        self._set_phase(Phase.BACKWARD)
        if not self._backward_callback_queued:
            try:
                torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)
                self._backward_callback_queued = True
            except RuntimeError:
                pass  # not inside a backward pass after all

    def _backward_done(self) -> None:
        try:
            self._backward_callback_queued = False
            if self.mode == "fast":
                self._claim_model_grads()
            while self._backward_stack:
                self._close_backward_frame(self._backward_stack.pop())
            self.ledger.module = None
            self._remove_tensor_handles()
            if self._phase_code == 2:
                self._set_phase(Phase.IDLE)
        except Exception as error:
            self._fail("backward end", error)

    def _claim_model_grads(self) -> None:
        ledger = self.ledger
        for ref in self._grad_params:
            param = ref()
            grad = param.grad if param is not None else None
            if grad is not None and self._is_wanted(grad):
                ledger.claim(grad, GRADIENTS)

    def _grad_accumulated(self, param: torch.Tensor) -> None:
        if "gradient hooks" in self._disabled:
            return
        try:
            if self._phase_code != 2:
                self._enter_backward()
            grad = param.grad
            if grad is not None and (self._wanted is None or self._wanted(grad)):
                self.ledger.claim(grad, GRADIENTS)
        except Exception as error:
            self._fail("gradient hooks", error)

    # ================================================================== optimizer hooks

    def _optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if "optimizer hooks" in self._disabled or not self._active:
            return
        try:
            if all(ref() is not optimizer for ref in self._optimizer_refs):
                self._optimizer_refs.append(weakref.ref(optimizer))
                self.optimizer_class = self.optimizer_class or type(optimizer).__name__
            if self._phase_code == 2:
                self._backward_done()
            elif self.mode == "fast":
                # no backward end seen (a compiled model's root hooks are traced away): the
                # gradients are claimed here, before the step reads them
                self._claim_model_grads()
            self._scan_optimizers(state=False)
            self._set_phase(Phase.OPTIMIZER)
        except Exception as error:
            self._fail("optimizer hooks", error)

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if "optimizer hooks" in self._disabled or not self._active:
            return
        try:
            self._scan_optimizers(grads=False)
            self._end_step(Phase.OPTIMIZER)
            self._set_phase(Phase.IDLE)
        except Exception as error:
            self._fail("optimizer hooks", error)

    # ================================================================== phases, samples, steps

    def _set_phase(self, phase: Phase) -> None:
        """Enter ``phase``; samples at forward start, forward end and backward end.

        Backward and optimizer starts add no sample: memory there equals the last one taken.
        """
        previous = self._phase
        if phase is previous:
            return
        if phase is Phase.FORWARD:
            self._probe_autocast()
        self._phase = phase
        self._phase_code = _PHASE_CODES[phase]
        if phase is Phase.FORWARD:
            self._sample()
        elif phase is Phase.IDLE and previous is not Phase.OPTIMIZER:
            self._sample(previous)

    def _probe_autocast(self) -> None:
        if self.autocast_dtype is None:
            kind = self.device.type if self.device.type in ("cpu", "cuda") else "cpu"
            if torch.is_autocast_enabled(kind):
                self.autocast_dtype = torch.get_autocast_dtype(kind)

    def _fast_split(self, current: int) -> list[int]:
        """Fast mode: split a counter reading into categories (known exactly, the rest by phase).

        The counter's growth since the block began, less the known tensors' growth, is the
        residual: activations during forward and backward, temporaries elsewhere.
        """
        split = self.ledger.current[:]
        residual = current - self._counter_base - (sum(split) - self._known_base)
        split[OTHER] += self._other_base
        if residual > 0:
            split[ACTIVATIONS if self._phase_code in (1, 2) else TEMPORARIES] += residual
        return split

    def _fast_read(self) -> int:
        """Fast mode's boundary hook body: read the counter, keep peaks and frames; the total."""
        current, peak = self._read_counter()  # type: ignore[misc]
        offset = self._fast_offset
        total = current + offset
        ledger = self.ledger
        if total > ledger.window_peak:
            ledger.observe_total(total, self._fast_split(current))
        elif ledger.frames and total > ledger.frames[-1]:
            ledger.frames[-1] = total
        if peak is not None and peak > self._peak_base:
            # The allocator saw a peak between two boundaries: attribute its excess over the
            # current split to the phase in flight.
            self._peak_base = peak
            peak_total = peak + offset
            if peak_total > ledger.window_peak:
                split = self._fast_split(current)
                split[ACTIVATIONS if self._phase_code in (1, 2) else TEMPORARIES] += max(
                    peak - current, 0
                )
                ledger.observe_total(peak_total, split)
        return total

    def _fast_observe(self) -> list[int]:
        """Fast mode: the split now (and its effect on the peaks)."""
        current = self._fast_read() - self._fast_offset
        split = self._fast_split(current)
        for i, value in enumerate(split):
            if value > self.ledger.category_peak[i]:
                self.ledger.category_peak[i] = value
                self.ledger.category_peak_seq[i] = self.ledger.seq
        return split

    def _current_split(self) -> list[int]:
        if self._fast:
            return self._fast_observe()
        return self.ledger.current[:]

    def _sample(self, phase: Phase | None = None, *, readings: bool = True) -> tuple[Any, ...]:
        """Take a sample (labelled with ``phase``, by default the phase in flight).

        Kept as a plain tuple in :class:`Sample`'s field order (the hot path builds no record);
        a :class:`Sample` is made only for observers and when :attr:`samples` is read.
        """
        split = self._current_split()
        stack = self._module_stack
        if self._on_cuda and readings:
            allocator, nvml = self._allocator_reading(), self._nvml_reading()
        else:
            allocator = nvml = None
        sample = (
            time.time(),
            self._step,
            phase or self._phase,
            stack[-1] if stack else self.ledger.module,
            tuple(split),
            sum(split),
            allocator,
            nvml,
        )
        self._samples.append(sample)
        if self._observers:
            self._notify("on_sample", Sample(*sample))
        return sample

    def _allocator_reading(self) -> AllocatorReading | None:
        if not self._on_cuda:
            return None
        from profiler.backends import cuda

        try:
            return cuda.allocator_reading(self.device.index)
        except Exception as error:
            self._fail("allocator reading", error)
            return None

    def _nvml_reading(self) -> NvmlReading | None:
        if not self._on_cuda or "nvml" in self._disabled:
            return None
        now = time.monotonic()
        if now - self._last_nvml_time < 0.5:
            return self._last_nvml
        self._last_nvml_time = now
        try:
            from profiler.backends import nvml

            self._last_nvml = nvml.process_reading(self.device.index)
        except Exception as error:
            self._disabled.add("nvml")
            self._last_nvml = None
            self._warn_once("nvml", f"NVML readings are off ({type(error).__name__}: {error})")
        return self._last_nvml

    def step(self) -> None:
        """End a step by hand (inference loops; training steps end at ``optimizer.step()``)."""
        if not self._active:
            raise TrackingError("mem.step() outside the `with track_memory(...)` block")
        self._scan_kv_caches()
        self._end_step()

    def _end_step(self, phase: Phase | None = None) -> None:
        now = time.perf_counter()
        sample = self._sample(phase)
        ledger = self.ledger
        step_peak, peak_bytes = ledger.reset_window()
        sample_time, sample_bytes, sample_total = sample[0], sample[4], sample[5]
        record = StepRecord(
            step=self._step,
            time=sample_time,
            duration=now - self._step_start,
            bytes=sample_bytes,
            total=sample_total,
            peak=step_peak,
            peak_bytes=peak_bytes,
        )
        self._steps.append(record)
        self._emit(
            Event(
                sample_time,
                self._step,
                EventKind.STEP_END,
                f"step {self._step}",
                {"total": sample_total, "peak": step_peak, "duration": record.duration},
            )
        )
        self._fold_step_modules()
        self._remove_tensor_handles()
        if self._oom_observer is not None and not self._oom_observer.attached:
            self._attach_oom_observer()
        self._step += 1
        ledger.step = self._step
        self._step_start = now
        self._notify("on_step", record)
        if self._hunt_steps_left:
            self._hunt_steps_left -= 1
            if not self._hunt_steps_left:
                self._end_hunt()

    def _fold_step_modules(self) -> None:
        for stats in self._module_stats.values():
            if stats[_OWN] > stats[_OWN_MAX]:
                stats[_OWN_MAX] = stats[_OWN]
            if stats[_INCL] > stats[_INCL_MAX]:
                stats[_INCL_MAX] = stats[_INCL]
            stats[_OWN] = stats[_INCL] = 0

    # ================================================================== KV cache

    def mark_kv_cache(self, obj: Any) -> None:
        """Count the tensors held by ``obj`` (a cache object, tuple or tensor) as KV cache."""
        if all(ref() is not obj for ref in self._kv_refs):
            # Tuples and lists cannot be weakly referenced: what they hold is charged now.
            with contextlib.suppress(TypeError):
                self._kv_refs.append(weakref.ref(obj))
        self._claim_kv(obj)

    def kv_caches(self) -> list[Any]:
        """The live cache objects the tracker knows."""
        return [c for c in (ref() for ref in self._kv_refs) if c is not None]

    def _scan_kv_caches(self) -> None:
        alive = []
        for ref in self._kv_refs:
            cache = ref()
            if cache is not None:
                alive.append(ref)
                self._claim_kv(cache)
        self._kv_refs = alive

    def _claim_kv(self, obj: Any) -> None:
        ledger = self.ledger
        for tensor in cache_tensors(obj):
            if self._is_wanted(tensor):
                ledger.claim(tensor, KV_CACHE, only_from=(TEMPORARIES, ACTIVATIONS, OTHER))
        self.kv_tokens = max(self.kv_tokens or 0, cache_positions(obj))

    # ================================================================== leak hunt

    def hunt(self, steps: int) -> None:
        """Record creation sites of every storage for ``steps`` steps (exact ledger on in fast mode)."""
        if not self._active or steps <= 0:
            return
        self.hunting = True
        self.record_sites = True
        self.ledger.record_sites = True
        self._hunt_steps_left = steps
        if self.mode == "fast":
            self._start_exact()
        # Called from a step-end observer, the countdown includes the step ending now.
        what = "exact mode on" if self.mode == "fast" else "recording creation sites"
        self._emit(
            Event(
                time.time(),
                self._step,
                EventKind.LEAK_HUNT,
                f"leak hunt: {what} for {steps - 1} steps to find what holds the growth",
                {"steps": steps - 1},
            )
        )

    def _end_hunt(self) -> None:
        self.hunting = False
        self.record_sites = False
        self.ledger.record_sites = False
        if self.mode == "fast":
            self._stop_exact()

    # ================================================================== observers and events

    def add_observer(self, observer: Any) -> None:
        """Feed ``observer`` samples, step records and events (any of its ``on_*`` methods)."""
        self._observers.append(observer)
        if self._active:
            self._call(observer, "on_start", self)

    def emit(self, event: Event) -> None:
        """Record an event and pass it to the observers (the stream writes it)."""
        self._emit(event)

    def _emit(self, event: Event) -> None:
        events = self.events
        events.append(event)
        if len(events) > _MAX_EVENTS + _MAX_EVENTS // 4:
            del events[: len(events) - _MAX_EVENTS]  # in batches: amortised O(1) per event
        self._notify("on_event", event)

    def _notify(self, method: str, *args: Any) -> None:
        for observer in list(self._observers):
            self._call(observer, method, *args)

    def _call(self, observer: Any, method: str, *args: Any) -> None:
        function = getattr(observer, method, None)
        if function is None:
            return
        try:
            function(*args)
        except Exception as error:
            if observer in self._observers:
                self._observers.remove(observer)
            self._warn_once(
                f"observer-{id(observer)}",
                f"{type(observer).__name__}.{method} failed and was switched off "
                f"({type(error).__name__}: {error})",
            )

    def _start_observers(self) -> None:
        if self._stream:
            try:
                from profiler.stream import SessionWriter

                writer = SessionWriter.for_tracker(self, home=self._home)
                self.session_dir = writer.directory
                self._observers.append(writer)
            except ImportError:
                pass
            except Exception as error:
                self._warn_once(
                    "stream", f"session stream is off ({type(error).__name__}: {error})"
                )
        if self._leaks_enabled:
            try:
                from profiler.leaks import LeakDetector

                self._leak_detector = LeakDetector(self)
                self._observers.append(self._leak_detector)
            except ImportError:
                pass
            except Exception as error:
                self._warn_once("leaks", f"leak detector is off ({type(error).__name__}: {error})")
        for observer in list(self._observers):
            self._call(observer, "on_start", self)

    # ================================================================== OOM

    def _attach_oom_observer(self) -> None:
        """Hear real CUDA OOMs from the allocator itself, even ones the program swallows."""
        if not self._on_cuda or "cuda oom observer" in self._disabled:
            return
        from profiler.backends import cuda
        from profiler.errors import BackendUnavailable

        try:
            if self._oom_observer is None:
                self._oom_observer = cuda.OomObserver(self._on_cuda_oom, snapshot=True)
            self._oom_observer.attach()  # False until CUDA is initialised: tried again per step
        except BackendUnavailable:
            self._disabled.add("cuda oom observer")
            self._oom_observer = None
        except Exception as error:
            self._fail("cuda oom observer", error)
            self._oom_observer = None

    def _on_cuda_oom(self, notice: Any) -> None:
        """Allocator callback at a real CUDA OOM: record the failure (runs inside the allocator)."""
        try:
            self._capture_failure(
                FailureSource.ALLOCATOR,
                requested=notice.requested,
                capacity=notice.device_total,
                free=notice.device_free,
                readings=False,
            )
        except Exception as error:  # never raise inside the allocator
            self._fail("cuda oom observer", error)

    def _on_overflow(self, requested: int, total: int) -> None:
        capacity = self.capacity or 0
        self._capture_failure(
            FailureSource.SIMULATED,
            requested=requested,
            capacity=capacity,
            free=max(capacity - total, 0),
        )

    def _capture_failure(
        self,
        source: FailureSource,
        *,
        requested: int | None,
        capacity: int | None,
        free: int | None,
        readings: bool = True,
    ) -> Failure:
        """The one place a :class:`Failure` is built: the sample at the failure is taken first."""
        sample = Sample(*self._sample(readings=readings))
        self.failure = Failure(
            source=source,
            sample=sample,
            requested=requested,
            capacity=capacity,
            free=free,
            live=tuple(self.ledger.live_storages()[:50]),
        )
        return self.failure

    def _handle_oom(self, exc: BaseException) -> None:
        if self.failure is None:
            requested, capacity, free = _parse_cuda_oom(str(exc))
            self._capture_failure(
                FailureSource.EXCEPTION, requested=requested, capacity=capacity, free=free
            )
        observer = self._oom_observer
        if (
            self.failure is not None
            and observer is not None
            and observer.snapshots
            and observer.snapshots[-1] is not None
            and self.failure.snapshot is None
        ):
            self.failure = dataclasses.replace(self.failure, snapshot=observer.snapshots[-1])
        try:
            from profiler.report.reporter import handle_oom
        except ImportError:
            return
        try:
            self.oom_report = handle_oom(self, exc)
        except Exception as error:
            self._warn_once("oom", f"OOM report failed ({type(error).__name__}: {error})")

    def suggestions(self, capacity: str | int | None = None) -> list[Any]:
        """Ranked changes that would make this run fit in ``capacity`` (default: the device's)."""
        from profiler.advice import suggest

        return suggest(self, capacity=capacity)

    def leaks(self) -> list[Any]:
        """Leaks confirmed so far (empty when the detector is off or found none)."""
        detector = self._leak_detector
        return list(getattr(detector, "leaks", [])) if detector is not None else []

    # ================================================================== predictions

    def _predict(self) -> None:
        try:
            from profiler.predict.tracked import predict_tracked
        except ImportError:
            return
        model = self.model
        optimizers = self._optimizers()
        training = self._saw_backward
        # No cache seen while the model ran: none was kept, so none is predicted.
        kv_tokens = self.kv_tokens
        if kv_tokens is None and self.observed_batch is not None:
            kv_tokens = 0
        try:
            predicted = predict_tracked(
                model,
                optimizers[0] if optimizers else None,
                batch=self.observed_batch,
                seq=self.observed_seq,
                training=training,
                autocast_dtype=self.autocast_dtype,
                rounding=self.rounding,
                kv_tokens=kv_tokens,
            )
        except Exception as error:
            self._warn_once("predict", f"predictions failed ({type(error).__name__}: {error})")
            return
        for category in CATEGORIES:
            value = predicted.get(category)
            self.predicted[category] = None if value is None else int(value)

    # ================================================================== results

    @property
    def info(self) -> SessionInfo:
        """The run's facts as seen so far (a fresh immutable record each call)."""
        device = self.device
        autocast = self.autocast_dtype
        return SessionInfo(
            name=self.name,
            mode=self.mode,
            device=str(device),
            device_type=device.type,
            device_index=device.index,
            rounding=self.rounding,
            capacity=self.capacity,
            gpu_name=self.gpu_name,
            pid=self.pid,
            step=self._step,
            model_class=self.model_class,
            param_count=self.param_count,
            trainable_param_count=self.trainable_param_count,
            optimizer_class=self.optimizer_class,
            observed_batch=self.observed_batch,
            observed_seq=self.observed_seq,
            kv_tokens=self.kv_tokens,
            kv_cache_reused=self.kv_cache_reused,
            autocast_dtype=None if autocast is None else str(autocast).removeprefix("torch."),
            checkpointing=self.checkpointing,
            attention_impl=self.attention_impl,
            training=self._saw_backward,
            start_time=self.start_time,
            end_time=self.end_time,
            session_dir=None if self.session_dir is None else str(self.session_dir),
            home=None if self._home is None else os.fspath(self._home),
        )

    @property
    def peaks(self) -> Peaks:
        """The highest total, its split, each category's own highest, and the bytes now."""
        ledger = self.ledger
        return Peaks(
            total=int(ledger.peak),
            at_peak=tuple(int(v) for v in ledger.at_peak),
            by_category=tuple(int(v) for v in ledger.category_peak),
            current=tuple(int(v) for v in self._current_bytes_by_category()),
        )

    def module_activity(self) -> list[ModuleActivity]:
        """One record per module seen, in the order first seen."""
        measured = self._module_frames
        exact = self.mode == "exact"
        return [
            ModuleActivity(
                name=name,
                calls=s[_CALLS],
                activations=max(s[_OWN], s[_OWN_MAX]) if measured else None,
                activations_inclusive=max(s[_INCL], s[_INCL_MAX]) if measured else None,
                forward_peak=s[_FWD_PEAK] if measured else None,
                backward_peak=s[_BWD_PEAK] if exact else None,
            )
            for name, s in list(self._module_stats.items())
        ]

    def live_storages(self) -> list[LiveStorage]:
        """Every storage the ledger holds now, largest first."""
        return self.ledger.live_storages()

    @property
    def samples(self) -> list[Sample]:
        """Samples taken so far (bounded: older ones are thinned on long runs)."""
        return [Sample(*sample) for sample in self._samples.items]

    @property
    def steps(self) -> list[StepRecord]:
        """One record per finished step (bounded like :attr:`samples`)."""
        return list(self._steps.items)

    @property
    def peak_bytes(self) -> int:
        """The highest total seen."""
        return int(self.ledger.peak)

    @property
    def device_total(self) -> int | None:
        """The device's memory: a simulated capacity, else NVML's total (CUDA), else ``None``."""
        if self.capacity is not None:
            return self.capacity
        nvml = self._last_nvml
        total = nvml.device_total if nvml is not None else None
        return total if isinstance(total, int) and total > 0 else None

    @property
    def current_bytes(self) -> int:
        """The total now (at the block's end, once it has exited)."""
        return int(sum(self._current_split())) if self._active else int(self._last_total())

    def _last_total(self) -> int:
        items = self._samples.items
        return items[-1][5] if items else 0

    def _current_bytes_by_category(self) -> list[int]:
        if self._active:
            return self._current_split()
        items = self._samples.items
        return list(items[-1][4]) if items else [0] * len(CATEGORIES)

    def breakdown(self) -> pd.DataFrame:
        """One row per category: bytes current, peak (of that category), at_peak, predicted."""
        import pandas as pd

        current = self._current_bytes_by_category()
        ledger = self.ledger
        rows = {
            "current": [int(v) for v in current],
            "peak": [int(v) for v in ledger.category_peak],
            "at_peak": [int(v) for v in ledger.at_peak],
            "predicted": [
                float("nan") if self.predicted[c] is None else float(self.predicted[c])  # type: ignore[arg-type]
                for c in CATEGORIES
            ],
        }
        frame = pd.DataFrame(rows, index=pd.Index([str(c) for c in CATEGORIES], name="category"))
        for column in ("current", "peak", "at_peak"):
            frame[column] = frame[column].astype("int64")
        return frame

    def timeline(self) -> pd.DataFrame:
        """One row per sample: time, step, phase, module, one column per category, total."""
        import pandas as pd

        samples = self._samples.items  # tuples in Sample's field order
        data: dict[str, list[Any]] = {
            "time": [s[0] for s in samples],
            "step": [s[1] for s in samples],
            "phase": [str(s[2]) for s in samples],
            "module": [s[3] for s in samples],
        }
        for i, category in enumerate(CATEGORIES):
            data[str(category)] = [s[4][i] for s in samples]
        data["total"] = [s[5] for s in samples]
        frame = pd.DataFrame(data)
        for column in [str(c) for c in CATEGORIES] + ["step", "total"]:
            frame[column] = frame[column].astype("int64")
        return frame

    def modules(self) -> pd.DataFrame:
        """One row per module FQN: activation bytes saved in its forward, forward/backward peaks.

        ``activations`` counts what the module itself saved (its children's are theirs);
        ``activations_inclusive`` adds its descendants'. Peaks are the highest total seen while
        the module's forward (backward) ran, above the total when it started. Per-module backward
        peaks need exact mode (NaN in fast mode).
        """
        import pandas as pd

        names = list(self._module_stats)
        stats = [self._module_stats[n] for n in names]
        exact = self.mode == "exact"
        measured = self._module_frames
        nan = math.nan
        frame = pd.DataFrame(
            {
                "activations": [max(s[_OWN], s[_OWN_MAX]) if measured else nan for s in stats],
                "activations_inclusive": [
                    max(s[_INCL], s[_INCL_MAX]) if measured else nan for s in stats
                ],
                "forward_peak": [s[_FWD_PEAK] if measured else nan for s in stats],
                "backward_peak": [float(s[_BWD_PEAK]) if exact else math.nan for s in stats],
                "calls": [s[_CALLS] for s in stats],
            },
            index=pd.Index(names, name="module"),
        )
        return frame

    def top_modules(self, limit: int = 10) -> list[tuple[str, int]]:
        """The ``limit`` modules that save the most activation bytes in a step (no pandas)."""
        if not self._module_frames:
            return []
        pairs = [
            (name, max(stats[_OWN], stats[_OWN_MAX]))
            for name, stats in list(self._module_stats.items())
        ]
        pairs = [pair for pair in pairs if pair[1] > 0]
        pairs.sort(key=lambda pair: (-pair[1], pair[0]))
        return pairs[:limit]

    def compare(self) -> pd.DataFrame:
        """Predicted vs measured per category, with the likely cause of each gap in words."""
        from profiler.predict.compare import compare

        context = {
            "rounding": self.rounding,
            "autocast_dtype": self.autocast_dtype,
            "attention_impl": self.attention_impl,
            "optimizer_class": self.optimizer_class,
            "training": self._saw_backward,
            "device": str(self.device),
        }
        return compare(self.breakdown(), context=context)

    def waterfall(self) -> Any:
        """NVML → reserved → allocated → categories, for this tracker's device."""
        from profiler.waterfall import waterfall

        return waterfall(self)

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary of the session (written to the stream at the end)."""
        frame_rows = {}
        current = self._current_bytes_by_category()
        for i, category in enumerate(CATEGORIES):
            frame_rows[str(category)] = {
                "current": int(current[i]),
                "peak": int(self.ledger.category_peak[i]),
                "at_peak": int(self.ledger.at_peak[i]),
                "predicted": self.predicted[category],
            }
        return {
            "name": self.name,
            "mode": self.mode,
            "device": str(self.device),
            "steps": self._step,
            "peak_bytes": self.peak_bytes,
            "current_bytes": int(sum(current)),
            "capacity": self.capacity,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "categories": frame_rows,
            "oom": self.failure is not None,
        }

    def __repr__(self) -> str:
        return (
            f"<MemoryTracker {self.name!r} mode={self.mode} device={self.device} "
            f"peak={format_bytes(self.peak_bytes)}>"
        )

    def __str__(self) -> str:
        return self.table()

    def table(self) -> str:
        """The readable table: category, current, peak, at peak, predicted, error %."""
        current = self._current_bytes_by_category()
        ledger = self.ledger
        header = f"{'category':<12} {'current':>12} {'peak':>12} {'at peak':>12} {'predicted':>12} {'error':>8}"
        lines = [
            f"gpumem: {self.name} · {self.mode} mode · {self.device} · {self._step} steps",
            header,
            "-" * len(header),
        ]
        for i, category in enumerate(CATEGORIES):
            predicted = self.predicted[category]
            if predicted:
                error = f"{(ledger.category_peak[i] - predicted) / predicted * 100:+.1f}%"
            else:
                error = "-"
            lines.append(
                f"{category.value:<12} {format_bytes(current[i]):>12} "
                f"{format_bytes(ledger.category_peak[i]):>12} {format_bytes(ledger.at_peak[i]):>12} "
                f"{format_bytes(predicted):>12} {error:>8}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<12} {format_bytes(sum(current)):>12} {'':>12} "
            f"{format_bytes(ledger.peak):>12}"
        )
        if self.device.type == "cuda":
            try:
                lines.append("")
                lines.extend(self.waterfall().lines())
            except Exception:  # the waterfall is extra; the table stands without it
                lines.pop()
        return "\n".join(lines)


class _BackwardMark:
    """A tensor hook that tells the tracker a module's backward started or ended."""

    __slots__ = ("name", "starting", "tracker_ref")

    def __init__(self, tracker: MemoryTracker, name: str, starting: bool) -> None:
        self.tracker_ref = weakref.ref(tracker)
        self.name = name
        self.starting = starting

    def __call__(self, grad: torch.Tensor) -> None:
        tracker = self.tracker_ref()
        if tracker is None or not tracker._active or "module hooks" in tracker._disabled:
            return None
        try:
            tracker._backward_mark(self.name, self.starting)
        except Exception as error:
            tracker._fail("module hooks", error)
        return None


class _Saved:
    """A tensor autograd saved for backward; when autograd lets go, the activation role ends."""

    __slots__ = ("entry", "ledger", "tensor")

    def __init__(self, tensor: torch.Tensor, entry: StorageEntry, ledger: Ledger) -> None:
        self.tensor = tensor
        self.entry = entry
        self.ledger = ledger

    def __del__(self) -> None:
        entry = self.entry
        entry.saves -= 1
        if entry.saves <= 0 and entry.cat == ACTIVATIONS:
            ledger = self.ledger
            if ledger.entries.get(entry.key) is entry:  # still alive and still this storage
                ledger.reclassify(entry, TEMPORARIES, follow_peak=False)


def _unpack(saved: Any) -> torch.Tensor:
    return saved.tensor if type(saved) is _Saved else saved


def _tensors_in(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, torch.Tensor):
                yield item
    elif isinstance(value, dict):
        for item in value.values():
            if isinstance(item, torch.Tensor):
                yield item
    else:
        loss = getattr(value, "loss", None)
        if isinstance(loss, torch.Tensor):
            yield loss
        logits = getattr(value, "logits", None)
        if isinstance(logits, torch.Tensor):
            yield logits
        last = getattr(value, "last_hidden_state", None)
        if isinstance(last, torch.Tensor):
            yield last


def _default_name() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    base = os.path.basename(argv0)
    if base in ("", "-c", "-m"):
        return "python"
    if base.endswith(".py"):
        base = base[:-3]
    return base or "python"


def _parse_cuda_oom(message: str) -> tuple[int | None, int | None, int | None]:
    """What a CUDA OOM message says: (requested, capacity, free) bytes, ``None`` where absent.

    Reads torch's wording: "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB
    of which 1.50 GiB is free."
    """
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}

    def grab(pattern: str) -> int | None:
        match = re.search(pattern, message)
        if match is None:
            return None
        try:
            value = float(match.group(1)) * units[match.group(2)]
        except (ValueError, OverflowError):
            return None
        return int(value) if math.isfinite(value) else None

    size = r"([0-9]+(?:\.[0-9]+)?) (B|KiB|MiB|GiB|TiB)"
    return (
        grab(r"Tried to allocate " + size),
        grab(r"total capacity of " + size),
        grab(size + r" is free"),
    )
