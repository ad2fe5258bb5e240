"""The exact strategy: a dispatch-level ledger that sees every storage created and freed.

A ``TorchDispatchMode`` charges each op's new output storages (temporaries, or weights for
autocast's casts of weights) and any input storage never seen (other). ``saved_tensors_hooks``
turn a temporary autograd keeps into an activation of the innermost module, until autograd lets
go of it. Module hooks keep per-module frames (peaks above the module's start) and put tensor
hooks on module inputs and outputs whose gradients mark each module's backward start and end.

Cost: a few microseconds per op (~2-4x on a step of tiny ops, a few percent on big ones).

Compiled code stays compiled: the dispatch mode says ``ignore_compile_internals``, so dynamo
neither skips frames while it is on the stack nor marks their code as never to compile. Kernels
inside a compiled region allocate without Python dispatch; at the boundaries of a compiled module
(``torch.compile(module)``) its unseen inputs are charged as other and its outputs as temporaries,
and what autograd saves inside it is an activation of that module (the pack hook sees it). Its
scratch between two boundaries is not seen (fast mode's allocator peak sees it on CUDA).
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import Iterable
from threading import get_ident
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from profiler.ledger import ACTIVATIONS, OTHER, TEMPORARIES, WEIGHTS, Ledger, StorageEntry
from profiler.records import Event, EventKind, Phase
from profiler.tracking.guard import Guard, Part
from profiler.tracking.hooks import HookSet
from profiler.tracking.phases import TENSOR_HOOKS, PhaseTracker, graph_task_id, is_compiling
from profiler.tracking.recompute import Recomputation
from profiler.tracking.state import (
    BASE,
    BWD_PEAK,
    CALLS,
    FWD_PEAK,
    INCL,
    MICROBATCH,
    OWN,
    EngineState,
    Mode,
    enter_microbatch,
    new_module_stats,
)

__all__ = ["ExactStrategy", "tensors_in"]

_aten = torch.ops.aten
# Ops are compared by id(): an OpOverload's __hash__ runs Python code on every call.
_CAST_OPS = frozenset(
    id(op)
    for op in (_aten._to_copy.default, _aten.to.dtype, _aten._autocast_to_reduced_precision.default)
)
_RESIZE_OPS = frozenset(
    id(op) for op in (_aten.resize_.default, _aten.resize_as_.default, _aten.set_.source_Storage)
)
# A fake mode lifts a constant (``torch.tensor(0.0)``) from a real tensor that is never device
# memory: those ops' inputs are not counted (checked only for an input the ledger does not know).
_LIFT_OPS = frozenset(id(op) for op in (_aten.lift_fresh.default, _aten.lift_fresh_copy.default))
Tensor = torch.Tensor
_BACKWARD = Phase.BACKWARD
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class ExactStrategy:
    """Measures every storage through the ledger; module frames from the ledger's total."""

    kind = Mode.EXACT

    def __init__(
        self, state: EngineState, guard: Guard, phases: PhaseTracker, hooks: HookSet
    ) -> None:
        self.state = state
        self.guard = guard
        self.phases = phases
        self.hooks = hooks
        self._tensor_hooks = hooks.group(TENSOR_HOOKS)  # the same list HookSet empties
        #: The dispatch mode and saved-tensor hooks are on (off again after a failure).
        self.on = False
        self._mode: _LedgerMode | None = None
        self._saved: Any = None
        #: The distributed watch (FSDP/DDP buffers), set by the engine.
        self.shards: Any = None
        #: Checkpoint's recomputations in backward (their saved tensors are activations).
        self.recompute = Recomputation(self._save_recomputed)
        #: The storages a non-reentrant recomputation saved, released at the backward's end.
        self._recomputed: list[StorageEntry] = []
        guard.on_switch_off(self._switched_off)
        phases.register_user_hooks(on_backward_end=self._release_recomputed)

    # ------------------------------------------------------------------ on and off

    def start(self) -> None:
        """Push the saved-tensor hooks and the dispatch mode (idempotent)."""
        if self._mode is not None:
            return
        saved = torch.autograd.graph.saved_tensors_hooks(self.pack, _unpack)
        saved.__enter__()
        self._saved = saved
        self._mode = _LedgerMode(self)
        self._mode.__enter__()
        self.on = True

    def stop(self) -> None:
        """Pop the dispatch mode and the saved-tensor hooks (idempotent)."""
        self.on = False
        mode, self._mode = self._mode, None
        if mode is not None:
            try:
                mode.__exit__(None, None, None)
            except Exception as error:
                self.guard.fail(Part.EXACT_LEDGER, error)
        saved, self._saved = self._saved, None
        if saved is not None:
            try:
                saved.__exit__(None, None, None)
            except Exception as error:
                self.guard.fail(Part.SAVED_TENSORS, error)

    def _switched_off(self, part: Part) -> None:
        if part is Part.EXACT_LEDGER:
            self.on = False

    def split(self) -> list[int]:
        """The bytes per category now: the ledger's own."""
        return self.state.ledger.current[:]

    # ------------------------------------------------------------------ module hooks

    def module_pre(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        """Global forward pre-hook: push the module, open its frame, hook its inputs."""
        if is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        state = self.state
        if Part.MODULE_HOOKS in self.guard.disabled or (
            state.thread != get_ident() and graph_task_id() == -1  # autograd's device threads
        ):
            return None
        try:
            name = state.module_name(module)
            stack = state.module_stack
            if not stack:
                self.phases.forward_starts()
            stack.append(name)
            if state.phase is _BACKWARD and graph_task_id() != -1:
                self.recompute.module_starts()  # checkpoint recomputes
            ledger = state.ledger
            ledger.module = name
            stats = state.module_stats.get(name)
            if stats is None:
                stats = state.module_stats[name] = new_module_stats()
            stats[CALLS] += 1
            if stats[MICROBATCH] != state.microbatch:
                enter_microbatch(stats, state.microbatch)
            if type(module) is _optimized_module_class():
                self._compiled_enters(args)
            if not state.module_frames:
                return None
            total = ledger.total
            ledger.frames.append(total)
            stats[BASE] = total
            if torch.is_grad_enabled():
                self.hook_first(name, args, starting=False)
        except Exception as error:
            self.guard.fail(Part.MODULE_HOOKS, error)
        return None

    def module_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Global forward hook: close the module's frame, hook its outputs, pop it."""
        if is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        state = self.state
        if Part.MODULE_HOOKS in self.guard.disabled or (
            state.thread != get_ident() and graph_task_id() == -1  # autograd's device threads
        ):
            return None
        try:
            stack = state.module_stack
            if not stack:
                return None
            name = stack.pop()
            ledger = state.ledger
            if state.compiled_depth and type(module) is _optimized_module_class():
                state.compiled_depth -= 1
                self._charge_unseen(output, TEMPORARIES)
            stats = state.module_stats.get(name) if state.module_frames else None
            if stats is not None:
                peak = ledger.pop_frame() if ledger.frames else 0
                if peak - stats[BASE] > stats[FWD_PEAK]:
                    stats[FWD_PEAK] = peak - stats[BASE]
            # a recomputation's end (in backward) gives the ledger back to the backward module
            backward = state.backward_stack
            ledger.module = stack[-1] if stack else backward[-1] if backward else None
            if torch.is_grad_enabled():
                self.hook_first(name, output, starting=True)
            if not stack:
                self.phases.forward_ends()
        except Exception as error:
            self.guard.fail(Part.MODULE_HOOKS, error)
        return None

    def _compiled_enters(self, args: Any) -> None:
        """A compiled module starts: its inputs not seen yet existed before (other)."""
        state = self.state
        state.compiled_depth += 1
        state.compiled_calls += 1
        self._charge_unseen(args, OTHER)
        if state.compiled_calls == 1 and self.phases.history is not None:
            self.phases.history.emit(
                Event(
                    time.time(),
                    state.step,
                    EventKind.WARNING,
                    "a torch.compile'd module ran: exact mode sees what it saves for backward "
                    "and returns, not its scratch inside the compiled kernels",
                    {"compiled": True},
                )
            )

    def _charge_unseen(self, value: Any, cat: int) -> None:
        ledger = self.state.ledger
        wanted = self.state.wanted
        for tensor in tensors_in(value):
            if wanted is None or wanted(tensor):
                ledger.add_tensor(tensor, cat)

    def hook_first(self, name: str, value: Any, *, starting: bool) -> None:
        """A tensor hook on the first tensor of ``value`` that requires grad: its gradient marks
        the module's backward start (outputs, ``starting``) or end (inputs)."""
        for tensor in tensors_in(value):
            if tensor.requires_grad:
                self._tensor_hooks.append(tensor.register_hook(_BackwardMark(self, name, starting)))
                return

    # ------------------------------------------------------------------ backward frames

    def backward_mark(self, name: str, starting: bool) -> None:
        """A module's backward started (its output's gradient) or ended (its input's)."""
        state = self.state
        if state.phase is not Phase.BACKWARD:
            self.phases.enter_backward()
        ledger = state.ledger
        stack = state.backward_stack
        if starting:
            stack.append(name)
            ledger.push_frame()
            ledger.module = name
            stats = state.module_stats.get(name)
            if stats is not None:
                stats[BASE] = ledger.total
        elif name in stack:
            while stack:
                done = stack.pop()
                self._close_backward_frame(done)
                if done == name:
                    break
            ledger.module = stack[-1] if stack else None

    def close_backward_frames(self) -> None:
        """The backward pass ended: close every module frame still open."""
        stack = self.state.backward_stack
        while stack:
            self._close_backward_frame(stack.pop())

    def _close_backward_frame(self, name: str) -> None:
        state = self.state
        ledger = state.ledger
        peak = ledger.pop_frame() if ledger.frames else 0
        stats = state.module_stats.get(name)
        if stats is not None and peak - stats[BASE] > stats[BWD_PEAK]:
            stats[BWD_PEAK] = peak - stats[BASE]

    # ------------------------------------------------------------------ saved tensors

    def pack(self, tensor: torch.Tensor) -> Any:
        """Saved-tensor pack hook: a temporary autograd keeps is an activation of this module.

        It stays one while autograd holds it: the returned :class:`_Saved` wrapper goes when the
        graph releases it, and with the last one the storage (if still alive, say the user's
        input ids) is a temporary again.
        """
        if not self.on or Part.SAVED_TENSORS in self.guard.disabled:
            return tensor
        try:
            state = self.state
            ledger = state.ledger
            entry = ledger.entries.get(tensor.untyped_storage()._cdata)
            if entry is None:
                # Unseen: made by a compiled region's kernels (no dispatch there); elsewhere a
                # tensor from before the block that no op has touched yet.
                if not state.compiled_depth or not state.is_wanted(tensor):
                    return tensor
                entry = ledger.add_tensor(tensor, TEMPORARIES)
                if entry is None:
                    return tensor
            if entry.cat == ACTIVATIONS:
                entry.saves += 1
                return _Saved(tensor, entry, ledger)
            if entry.cat == TEMPORARIES:
                self._book_saved(entry)
                return _Saved(tensor, entry, ledger)
        except Exception as error:
            self.guard.fail(Part.SAVED_TENSORS, error)
        return tensor

    def _book_saved(self, entry: StorageEntry) -> None:
        """A temporary autograd keeps: an activation of the innermost module (and its outers')."""
        state = self.state
        module = state.ledger.module
        state.ledger.reclassify(entry, ACTIVATIONS)
        entry.saves = 1
        entry.module = module
        if module is not None:
            stats = state.module_stats.get(module)
            if stats is not None:
                stats[OWN] += entry.nbytes
            for outer in state.module_stack:
                outer_stats = state.module_stats.get(outer)
                if outer_stats is not None:
                    outer_stats[INCL] += entry.nbytes

    def _save_recomputed(self, tensor: torch.Tensor) -> None:
        """A tensor a non-reentrant checkpoint recomputation keeps for backward: an activation
        of the recomputing module, as the same tensor saved in a plain forward would be."""
        if not self.on or Part.SAVED_TENSORS in self.guard.disabled:
            return
        try:
            entry = self.state.ledger.entry_of(tensor)
            if entry is None:
                return
            if entry.cat == TEMPORARIES:
                self._book_saved(entry)
                self._recomputed.append(entry)
            elif entry.cat == ACTIVATIONS:
                entry.saves += 1
                self._recomputed.append(entry)
        except Exception as error:
            self.guard.fail(Part.SAVED_TENSORS, error)

    def _release_recomputed(self) -> None:
        """The backward pass ended: what recomputations saved and is still alive is no longer
        kept for backward (checkpoint dropped it), so its activation role ends."""
        recomputed, self._recomputed = self._recomputed, []
        ledger = self.state.ledger
        for entry in recomputed:
            entry.saves -= 1
            if (
                entry.saves <= 0
                and entry.cat == ACTIVATIONS
                and ledger.entries.get(entry.key) is entry
            ):
                ledger.reclassify(entry, TEMPORARIES, follow_peak=False)


def _optimized_module_class() -> type | None:
    """dynamo's ``OptimizedModule`` once dynamo is imported (no module is one before)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None) if eval_frame is not None else None


try:  # dynamo's per-code frame strategy (C, no import of torch._dynamo)
    from torch._C._dynamo.eval_frame import (
        _FrameAction,
        _FrameExecStrategy,
        set_code_exec_strategy,
    )

    _CAN_SKIP_CODE = True
except ImportError:  # pragma: no cover - an older torch: torch's own wrapper is kept
    _CAN_SKIP_CODE = False


def _skip_dynamo_in(cls: type) -> None:
    """Tell dynamo never to trace ``cls``'s methods nor anything they call.

    A dispatch mode's ``__torch_dispatch__`` runs wherever an op runs, also inside a frame that
    dynamo is compiling (an op that breaks the graph runs eagerly there): dynamo must not trace
    gpumem's code. torch wraps the method in ``torch._dynamo.disable`` for that; marking the
    code objects as skipped, recursively, does the same without a wrapper call per op.
    """
    if not _CAN_SKIP_CODE:
        return
    strategy = _FrameExecStrategy(_FrameAction.SKIP, _FrameAction.SKIP)
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is not None:
            set_code_exec_strategy(code, strategy)


class _LedgerMode(TorchDispatchMode):
    """Charges every storage an op creates or touches to the ledger (exact mode's hot path).

    Per op: the outputs whose storage is new are charged (temporaries, or weights for autocast's
    casts of weights); inputs whose storage the ledger has never seen existed before the block
    (or came from elsewhere) and are charged as other. Views and in-place results share a known
    storage and cost one dict lookup.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Whether torch wraps ``__torch_dispatch__`` in dynamo's ``disable`` (about 5 us an
        op): not where dynamo can be told to skip this class's code instead (at no cost per
        op; :func:`_skip_dynamo_in`)."""
        return not _CAN_SKIP_CODE

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Let dynamo compile and run compiled code while the ledger is on the stack.

        Without this, dynamo skips every frame while a dispatch mode is active and marks its code
        as not to be compiled again: the program would stay eager after the block.
        """
        return True

    def __init__(self, strategy: ExactStrategy) -> None:
        super().__init__()
        self.strategy = strategy
        self.state = strategy.state
        self.ledger = strategy.state.ledger
        self.entries = self.ledger.entries
        self.wanted = strategy.state.wanted
        shards = strategy.shards
        self.comm_ops: frozenset[int] = shards.comm_ops if shards is not None else frozenset()
        # DTensor ops are let through (NotImplemented) so DTensor runs them as ops on its local
        # shards, which come back here: the ledger sees the bytes this rank holds.
        dtensor = sys.modules.get("torch.distributed.tensor")
        kind = getattr(dtensor, "DTensor", None)
        self.desugar: frozenset[type] = frozenset((kind,)) if kind is not None else frozenset()
        # DTensor's sharding propagation runs ops on fake tensors under a fake mode of its own:
        # no memory. Skipped unless the block itself runs on fake tensors (the dry run).
        self.skip_fake: type | None = None
        if kind is not None:
            from torch._guards import active_fake_mode
            from torch._subclasses.fake_tensor import FakeTensor

            self.skip_fake = FakeTensor if active_fake_mode() is None else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        # The hot path: one call per op, inlined on purpose (a helper call per op costs ~3%).
        if types and self.desugar and not self.desugar.isdisjoint(types):
            return NotImplemented
        out = func(*args, **kwargs) if kwargs else func(*args)
        if not self.strategy.on:
            return out
        try:
            if self.state.phase is not _BACKWARD and graph_task_id() != -1:
                self.strategy.phases.enter_backward()
            skip_fake = self.skip_fake
            if skip_fake is not None and (
                isinstance(out, skip_fake)
                or (not isinstance(out, Tensor) and _on_fake(out, skip_fake))
            ):
                return out
            if self.comm_ops and id(func) in self.comm_ops:
                self.strategy.shards.collective(func, args)
            entries = self.entries
            wanted = self.wanted
            ledger = self.ledger
            # The storage lookup comes first: a known storage is a wanted one (only wanted
            # tensors are charged), so the device check runs for unseen storages only.
            for arg in args:
                if isinstance(arg, Tensor):
                    if (
                        arg.untyped_storage()._cdata not in entries
                        and (wanted is None or wanted(arg))
                        and id(func) not in _LIFT_OPS
                    ):
                        ledger.add_tensor(arg, OTHER)
                elif type(arg) is list or type(arg) is tuple:
                    for item in arg:
                        if (
                            isinstance(item, Tensor)
                            and item.untyped_storage()._cdata not in entries
                            and (wanted is None or wanted(item))
                        ):
                            ledger.add_tensor(item, OTHER)
            if isinstance(out, Tensor):
                storage = out.untyped_storage()
                if storage._cdata in entries:
                    if id(func) in _RESIZE_OPS or (kwargs and "out" in kwargs):
                        ledger.resize(out)
                elif wanted is None or wanted(out):
                    cat = TEMPORARIES
                    if id(func) in _CAST_OPS and ledger.category_of(args[0]) == WEIGHTS:
                        cat = WEIGHTS  # autocast's copy of a weight scales with the weights
                    if type(out) in _PLAIN:
                        ledger._add(storage, out, cat)  # (add_tensor, less its second lookup)
                    else:
                        ledger.add_tensor(out, cat)
            elif type(out) is tuple or type(out) is list:
                for item in out:
                    if isinstance(item, Tensor):
                        if item.untyped_storage()._cdata in entries:
                            if kwargs and "out" in kwargs:
                                ledger.resize(item)
                        elif wanted is None or wanted(item):
                            ledger.add_tensor(item, TEMPORARIES)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError, TypeError):
            # A tensor without a plain storage (sparse, nested, a wrapper subclass): go the
            # careful way for this op.
            self._careful(args, out)
        except Exception as exc:  # never break the user's program
            self.strategy.guard.fail(Part.EXACT_LEDGER, exc)
        return out

    def _careful(self, args: Any, out: Any) -> None:
        ledger = self.ledger
        wanted = self.wanted
        try:
            for tensor in tensors_in(args):
                if wanted is None or wanted(tensor):
                    ledger.add_tensor(tensor, OTHER)
            for tensor in tensors_in(out):
                if wanted is None or wanted(tensor):
                    ledger.add_tensor(tensor, TEMPORARIES)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            self.strategy.guard.fail(Part.EXACT_LEDGER, exc)


_skip_dynamo_in(_LedgerMode)


class _BackwardMark:
    """A tensor hook that tells the strategy a module's backward started or ended."""

    __slots__ = ("name", "starting", "strategy_ref")

    def __init__(self, strategy: ExactStrategy, name: str, starting: bool) -> None:
        self.strategy_ref = weakref.ref(strategy)
        self.name = name
        self.starting = starting

    def __call__(self, grad: torch.Tensor) -> None:
        strategy = self.strategy_ref()
        if (
            strategy is None
            or not strategy.state.active
            or Part.MODULE_HOOKS in strategy.guard.disabled
        ):
            return None
        try:
            strategy.backward_mark(self.name, self.starting)
        except Exception as error:
            strategy.guard.fail(Part.MODULE_HOOKS, error)
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


def _on_fake(out: Any, kind: type) -> bool:
    """Whether an op's first output tensor is a fake tensor (no memory behind it)."""
    for tensor in tensors_in(out):
        return isinstance(tensor, kind)
    return False


def _unpack(saved: Any) -> torch.Tensor:
    return saved.tensor if type(saved) is _Saved else saved


def tensors_in(value: Any) -> Iterable[torch.Tensor]:
    """The tensors directly in ``value``: a tensor, a list/tuple/dict of them, or a model output
    (its ``loss``, ``logits`` and ``last_hidden_state``)."""
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
        for attribute in ("loss", "logits", "last_hidden_state"):
            found = getattr(value, attribute, None)
            if isinstance(found, torch.Tensor):
                yield found
