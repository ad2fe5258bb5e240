"""The engine for one tracked block: the parts wired together, hooks in at entry and out at exit.

One mode value (:class:`~profiler.tracking.state.Mode`) picks the strategy that measures what the
known tensors do not cover; a leak hunt swaps fast mode's strategy for the exact one for a few
steps (module hooks swapped, the dispatch mode pushed) and back.
"""

from __future__ import annotations

import threading
import time
from threading import get_ident
from typing import Any

import torch
import torch.optim.optimizer as optim_mod
from torch.nn.modules import module as module_mod

from profiler.errors import TrackingError
from profiler.ledger import GRADIENTS, Ledger
from profiler.records import Event, EventKind, Phase
from profiler.tracking import fast as fast_mod
from profiler.tracking.capture import FailureCapture
from profiler.tracking.exact import ExactStrategy
from profiler.tracking.fast import FastStrategy
from profiler.tracking.guard import Guard, Part
from profiler.tracking.history import History
from profiler.tracking.hooks import HookSet
from profiler.tracking.known import KnownTensors
from profiler.tracking.options import Options, device_filter
from profiler.tracking.phases import TENSOR_HOOKS, PhaseTracker, graph_task_id, is_compiling
from profiler.tracking.sharding import ShardWatch
from profiler.tracking.state import INCL, INCL_MAX, OWN, OWN_MAX, EngineState, Mode

__all__ = ["MODULE_SAMPLE_EVERY", "Engine"]

#: Fast mode attributes memory to modules on every this many steps (steps 0, N, 2N...), by
#: running the exact strategy for that step; the other steps have hooks on the root module and
#: the optimizer only. 0: fast mode's own module hooks on every step (counter reads per module
#: where the counter is cheap), as without a model.
MODULE_SAMPLE_EVERY = 1000

#: Hook groups: the strategy's global module hooks (swapped by a hunt), and the rest.
_MODULE_HOOKS = "module"
_MAIN_HOOKS = "main"


class Engine:
    """Measures one ``with`` block: owns the parts, installs and removes every hook."""

    def __init__(
        self,
        options: Options,
        model: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer | None,
    ) -> None:
        self.options = options
        self.state = state = EngineState(options, model, optimizer)
        self.guard = Guard()
        self.hooks = HookSet()
        self.history = History(state, self.guard, options.max_samples, options.max_steps)
        self.phases = PhaseTracker(state, self.history, self.guard, self.hooks)
        self.known = KnownTensors(state)
        self.exact = ExactStrategy(state, self.guard, self.phases, self.hooks)
        self.fast = FastStrategy(state, self.guard, self.phases)
        self.shards = self.exact.shards = ShardWatch(state, self.guard)
        self.capture = FailureCapture(state, self.history, self.guard)
        self.strategy: ExactStrategy | FastStrategy = self.exact
        self.hunting = False
        self._hunt_steps_left = 0
        self._optimizer_depth = 0
        self._grads_claimed = False
        #: A parameter's gradient hook marks backward starts (fast mode, after a full claim).
        self._starts_hooked = False
        self.phases.register_user_hooks(on_backward_end=self._backward_ended)

    # ------------------------------------------------------------------ enter and exit

    def enter(self, run: Any) -> None:
        """Start measuring: resolve the options, charge what exists, install every hook.

        ``run`` is what observers are handed (the facade). On any error every hook is removed
        again before the error propagates.
        """
        state = self.state
        if state.active:
            raise TrackingError("this tracker is already active", hint="use one `with` per block")
        self._resolve()
        options = self.options
        self.history = History(state, self.guard, options.max_samples, options.max_steps)
        self.history.run = run
        self.phases.history = self.capture.history = self.history
        self.phases.reset()
        self.capture.reset()
        self._optimizer_depth = 0
        self._starts_hooked = False
        state.thread = threading.get_ident()  # hooks count this thread's work only
        state.start_time = time.time()
        state.step_start = time.perf_counter()
        state.active = True
        try:
            model = state.model
            self.known.name_modules(model)
            self.known.register_model(model)
            self.shards.attach(model)
            self.known.scan_optimizers()
            self.strategy = self.fast if state.mode is Mode.FAST else self.exact
            if state.mode is Mode.FAST:
                self.fast.start()
                if model is not None and MODULE_SAMPLE_EVERY > 0:
                    # per-module figures from the exact strategy on sampled steps, step 0 first
                    state.module_every = MODULE_SAMPLE_EVERY
                    state.module_frames = True
                    self.strategy = self.exact
            self.known.lean_grads = self.phases.defer_end = self.strategy is self.fast
            self._install(model)
            self.capture.attach()
            if options.history:
                self.capture.start_history(options.history)
        except BaseException:
            self._uninstall()
            state.active = False
            raise

    def start_recording(self) -> None:
        """The observers are in place: the start event and the first sample."""
        state = self.state
        self.history.emit(Event(time.time(), 0, EventKind.START, f"tracking {state.name}", {}))
        if state.module_every:
            every = state.module_every
            self.history.emit(
                Event(
                    time.time(),
                    0,
                    EventKind.WARNING,
                    f"fast mode: per-module figures come from steps 0, {every}, {2 * every}... "
                    "(the exact ledger runs on those steps; the others hook the root module and "
                    "the optimizer only)",
                    {"module_every": every},
                )
            )
        self.history.sample()

    def _resolve(self) -> None:
        state, options = self.state, self.options
        state.reset()
        model = state.model
        state.device = options.resolve_device(model)
        state.mode = options.resolve_mode(state.device)
        if (
            state.mode is Mode.FAST
            and state.device.type != "cuda"
            and not fast_mod.CPU_HEAP_COUNTER
        ):
            self.guard.warn_once(
                "fast-off-cuda",
                f"fast mode has no tensor-only counter on {state.device.type} (glibc's heap "
                "counter sees the whole process): measuring in exact mode",
            )
            state.mode = Mode.EXACT
        if state.mode is Mode.FAST and state.capacity is not None:
            self.guard.warn_once(
                "fast-capacity",
                "a simulated capacity is enforced by the exact ledger: measuring in exact mode",
            )
            state.mode = Mode.EXACT
        state.rounding = options.resolve_rounding(state.device)
        state.wanted = device_filter(state.device)
        state.on_cuda = state.device.type == "cuda"
        state.ledger = Ledger(
            rounding=state.rounding, capacity=state.capacity, on_overflow=self.capture.on_overflow
        )

    def exit(self, exc: BaseException | None) -> None:
        """Stop measuring: a last sample, every hook out, the failure completed if one ran out."""
        state = self.state
        try:
            if state.active:
                self.phases.finish_backward()
                self.known.scan_kv_caches()
                self.known.scan_optimizers()
                self.history.sample()
        except Exception as error:
            self.guard.fail(Part.FINAL_SAMPLE, error)
        finally:
            self.capture.stop_history()
            self._uninstall()
            state.active = False
            self.hunting = False
            self._hunt_steps_left = 0
            self.history.split_now = self.exact.split
            state.end_time = time.time()
        self.fold_step_modules()
        if isinstance(exc, torch.OutOfMemoryError):
            self.capture.at_exit(exc)

    # ------------------------------------------------------------------ hooks in, hooks out

    def _install(self, model: torch.nn.Module | None) -> None:
        hooks = self.hooks
        self._install_module_hooks(self.strategy)
        hooks.add(_MAIN_HOOKS, optim_mod.register_optimizer_step_pre_hook(self._optimizer_pre))
        hooks.add(_MAIN_HOOKS, optim_mod.register_optimizer_step_post_hook(self._optimizer_post))
        if model is not None:
            hooks.add(
                _MAIN_HOOKS, model.register_forward_pre_hook(self._root_pre, with_kwargs=True)
            )
            hooks.add(
                _MAIN_HOOKS,
                model.register_forward_hook(self._root_post, with_kwargs=True, always_call=True),
            )
            # Exact mode claims gradients as each one lands; fast mode once per step, at the
            # backward's end (a full claim on sampled steps, else the O(1) gradient pool).
            for param in self.known.trainable_params(model):
                if self.state.mode is Mode.EXACT:
                    hooks.add(
                        _MAIN_HOOKS, param.register_post_accumulate_grad_hook(self._grad_landed)
                    )
        if self.strategy is self.exact:
            self.exact.start()
        self.history.split_now = self._split_for(self.strategy)

    def _split_for(self, strategy: ExactStrategy | FastStrategy) -> Any:
        # Fast mode keeps its counter's split on its sampled steps (one consistent total, the
        # categories the ledger saw exactly); a leak hunt measures with the ledger alone (the
        # growth it sizes is the ledger's, not the counter's).
        if self.state.mode is Mode.FAST and not self.hunting:
            return self.fast.split
        return strategy.split

    def _install_module_hooks(self, strategy: ExactStrategy | FastStrategy) -> None:
        # The global module hooks fire in every thread: the strategies count their own thread's
        # forwards only (state.thread, set at entry), so two trackers in two threads each see
        # their own work.
        if strategy is self.fast and self.state.module_every:
            return  # root and optimizer hooks only
        self.hooks.add(
            _MODULE_HOOKS, module_mod.register_module_forward_pre_hook(strategy.module_pre)
        )
        self.hooks.add(
            _MODULE_HOOKS,
            module_mod.register_module_forward_hook(strategy.module_post, always_call=True),
        )

    def _uninstall(self) -> None:
        """Every hook out. Each step runs even if one before it raised or was interrupted
        (a Ctrl-C landing here); the first such exception is raised again at the end."""
        first: BaseException | None = None
        for part in (
            self.capture.detach,
            self.exact.stop,
            self.shards.detach,
            self.known.clear,
            self.hooks.remove_all,
            self._clear_stacks,
        ):
            try:
                part()
            except BaseException as error:  # noqa: BLE001 - the other steps must still run
                first = first or error
        if first is not None:
            raise first

    def _clear_stacks(self) -> None:
        state = self.state
        state.module_stack.clear()
        state.backward_stack.clear()
        state.compiled_depth = 0
        state.ledger.frames.clear()

    def _mine(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether an optimizer step is this tracker's: in its thread, or one it tracks."""
        if threading.get_ident() == self.state.thread:
            return True
        return any(ref() is optimizer for ref in self.state.optimizer_refs)

    # ------------------------------------------------------------------ root and gradients

    def _root_pre(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict) -> None:
        if is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        try:
            self.phases.forward_starts()  # no-op where a global module hook saw it first
            self.known.observe_inputs(args, kwargs)
        except Exception as error:
            self.guard.fail(Part.INPUTS, error)
        return None

    def _root_post(self, module: torch.nn.Module, args: Any, kwargs: dict, output: Any) -> None:
        if is_compiling():
            return None  # traced by torch.compile: stay out of the graph (no graph break)
        try:
            if not self._starts_hooked and self.strategy is self.fast and torch.is_grad_enabled():
                # fast mode's backward hook until a parameter is hooked for good: the root
                # output's gradient starts the backward
                self.exact.hook_first(self.state.module_name(module), output, starting=True)
            self.known.observe_output(output)
            if not self.state.module_stack:
                self.phases.forward_ends()  # no-op where a global module hook saw it first
        except Exception as error:
            self.guard.fail(Part.KV_CACHE, error)
        return None

    def _hook_backward_starts(self) -> None:
        """Fast mode's lean steps: hook the parameter whose gradient comes first, once (no
        per-step tensor hook); its gradient's arrival marks each backward's start."""
        if self._starts_hooked or self.state.model is None:
            return
        ref = self.known.gradients.first_landing
        param = ref() if ref is not None else None
        if param is None:
            return
        self.hooks.add(_MAIN_HOOKS, param.register_post_accumulate_grad_hook(self._backward_seen))
        self._starts_hooked = True

    def _backward_seen(self, param: torch.Tensor) -> None:
        if Part.GRADIENT_HOOKS in self.guard.disabled or not self.state.active:
            return
        try:
            if self.state.phase is not Phase.BACKWARD and graph_task_id() != -1:
                self.phases.enter_backward()
        except Exception as error:
            self.guard.fail(Part.GRADIENT_HOOKS, error)

    def _grad_landed(self, param: torch.Tensor) -> None:
        if Part.GRADIENT_HOOKS in self.guard.disabled:
            return
        try:
            state = self.state
            if state.phase is not Phase.BACKWARD:
                self.phases.enter_backward()
            grad = param.grad
            if grad is not None and (state.wanted is None or state.wanted(grad)):
                state.ledger.claim(grad, GRADIENTS)
        except Exception as error:
            self.guard.fail(Part.GRADIENT_HOOKS, error)

    def _backward_ended(self) -> None:
        state = self.state
        if state.mode is Mode.FAST and not self._grads_claimed:
            self.known.claim_model_grads()
            self._grads_claimed = True  # one claim per step
            if self.strategy is self.fast and not self._starts_hooked:
                self._hook_backward_starts()
        if state.backward_stack:
            self.exact.close_backward_frames()

    # ------------------------------------------------------------------ optimizer and steps

    def _optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if Part.OPTIMIZER_HOOKS in self.guard.disabled or not self.state.active:
            return
        if get_ident() != self.state.thread and not self._mine(optimizer):
            return  # another thread's optimizer (another tracker's work)
        # An optimizer subclass whose step() calls super().step() runs the hooks twice, nested
        # (torch patches each class's step): only the outermost step counts.
        if self.state.phase is not Phase.OPTIMIZER:
            self._optimizer_depth = 0  # a step that raised never ran its post hook
        self._optimizer_depth += 1
        if self._optimizer_depth > 1:
            return
        try:
            self.known.adopt_optimizer(optimizer)
            if self.state.phase is Phase.BACKWARD:
                self.phases.finish_backward()
            elif self.state.mode is Mode.FAST and not self._grads_claimed:
                # no backward end seen (a compiled model's root hooks are traced away): the
                # gradients are claimed here, before the step reads them
                self.known.claim_model_grads()
                self._grads_claimed = True
            self.known.scan_optimizers(opt_state=False)
            self.phases.set_phase(Phase.OPTIMIZER)
        except Exception as error:
            self.guard.fail(Part.OPTIMIZER_HOOKS, error)

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if Part.OPTIMIZER_HOOKS in self.guard.disabled or not self.state.active:
            return
        if get_ident() != self.state.thread and not self._mine(optimizer):
            return
        self._optimizer_depth = max(self._optimizer_depth - 1, 0)
        if self._optimizer_depth:
            return
        try:
            # fast mode rescans the state only when it changed size (new state, new groups)
            lean = self.state.mode is Mode.FAST and self.strategy is self.fast
            self.known.scan_optimizers(grads=False, changed_only=lean)
            self.end_step(Phase.OPTIMIZER)
            self.phases.set_phase(Phase.IDLE)
        except Exception as error:
            self.guard.fail(Part.OPTIMIZER_HOOKS, error)

    def step(self) -> None:
        """End a step by hand (inference loops; training steps end at ``optimizer.step()``)."""
        if not self.state.active:
            raise TrackingError("mem.step() outside the `with track_memory(...)` block")
        self.known.scan_kv_caches(once=True)  # what a forward's end walked is not walked again
        self.phases.finish_backward()
        self.end_step()

    def end_step(self, phase: Phase | None = None) -> None:
        """Close the step: its record to the observers, per-step hooks out, the hunt counted."""
        state = self.state
        now = time.perf_counter()
        record = self.history.record_step(phase, now)
        if self.strategy is self.exact or not state.module_every:
            self.fold_step_modules()  # (fast mode's lean steps see no module)
        self.hooks.remove(TENSOR_HOOKS)
        self.capture.reattach()
        state.step += 1
        state.ledger.step = state.step
        state.step_start = now
        self._grads_claimed = False
        self.known.new_step()
        self.history.notify("on_step", record)
        if self._hunt_steps_left:
            self._hunt_steps_left -= 1
            if not self._hunt_steps_left:
                self._end_hunt()
        every = state.module_every
        if every and not self.hunting and state.active:
            wanted = self.exact if state.step % every == 0 else self.fast
            if wanted is not self.strategy:
                self._swap(wanted)

    def fold_step_modules(self) -> None:
        """Fold this step's per-module activations into each module's most in any step."""
        for stats in self.state.module_stats.values():
            if stats[OWN] > stats[OWN_MAX]:
                stats[OWN_MAX] = stats[OWN]
            if stats[INCL] > stats[INCL_MAX]:
                stats[INCL_MAX] = stats[INCL]
            stats[OWN] = stats[INCL] = 0

    # ------------------------------------------------------------------ leak hunt

    def hunt(self, steps: int) -> None:
        """Record creation sites for ``steps`` steps; fast mode swaps in the exact strategy."""
        state = self.state
        if not state.active or steps <= 0:
            return
        self.hunting = True
        state.ledger.record_sites = True
        self._hunt_steps_left = steps
        if state.mode is Mode.FAST:
            self._swap(self.exact)
        self.history.split_now = self._split_for(self.strategy)
        # Called from a step-end observer, the countdown includes the step ending now.
        what = "exact mode on" if state.mode is Mode.FAST else "recording creation sites"
        self.history.emit(
            Event(
                time.time(),
                state.step,
                EventKind.LEAK_HUNT,
                f"leak hunt: {what} for {steps - 1} steps to find what holds the growth",
                {"steps": steps - 1},
            )
        )

    def _end_hunt(self) -> None:
        self.hunting = False
        self.state.ledger.record_sites = False
        if self.state.mode is Mode.FAST:
            self._swap(self.fast)
        self.history.split_now = self._split_for(self.strategy)

    def _swap(self, strategy: ExactStrategy | FastStrategy) -> None:
        if strategy is self.strategy:
            return
        self.hooks.remove(_MODULE_HOOKS)
        if strategy is self.exact:
            self.exact.start()
        else:
            self.exact.stop()
        self.strategy = strategy
        self.known.lean_grads = self.phases.defer_end = strategy is self.fast
        if strategy is self.fast:
            self._hook_backward_starts()
        self._install_module_hooks(strategy)
        self.history.split_now = self._split_for(strategy)

    # ------------------------------------------------------------------ reading

    def current_split(self) -> list[int]:
        """The bytes per category now (during the block), else at its last sample."""
        if self.state.active:
            return self.strategy.split()
        last = self.history.last_bytes()
        return list(last) if last is not None else [0] * len(self.state.ledger.current)

    def add_observer(self, observer: Any) -> None:
        """Feed ``observer`` samples, step records and events."""
        self.history.add_observer(observer, started=self.state.active)
