"""Where the program is: idle, forward, backward or the optimizer step, and when each changes.

Samples are taken on the changes that matter (forward start, forward end, backward end); backward
and optimizer starts add none, since memory there equals the last sample. A backward pass is
noticed by the first hook that fires inside the autograd engine (``_current_graph_task_id``), and
its end by a callback queued on the engine (fast mode's lean steps: at the next boundary). Listeners hear phase changes and backward ends, in the
manner of torch's ``ModTracker.register_user_hooks``.

Every hook steps aside while ``torch.compile`` traces (:data:`is_compiling`), so dynamo neither
traces gpumem's code nor breaks the user's graph at it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from profiler.records import Phase
from profiler.tracking.guard import Guard, Part
from profiler.tracking.history import History
from profiler.tracking.hooks import HookSet
from profiler.tracking.state import EngineState

__all__ = ["TENSOR_HOOKS", "PhaseTracker", "graph_task_id", "is_compiling"]

#: ``-1`` outside a backward pass, else the running graph task's id.
graph_task_id = torch._C._current_graph_task_id
#: True while dynamo traces: hooks return at once (no graph break, nothing traced).
is_compiling = torch.compiler.is_compiling
#: The hook group of per-step tensor hooks (removed at each backward end and step end).
TENSOR_HOOKS = "tensor"


class PhaseTracker:
    """Owns the phase: changes it, samples on the changes that matter, tells the listeners."""

    def __init__(self, state: EngineState, history: History, guard: Guard, hooks: HookSet) -> None:
        self.state = state
        self.history = history
        self.guard = guard
        self.hooks = hooks
        self._phase_listeners: list[Callable[[Phase, Phase], None]] = []
        self._backward_end_listeners: list[Callable[[], None]] = []
        self._callback_queued = False
        #: Fast mode's lean steps: no callback queued on the autograd engine (~14 us a backward);
        #: the backward's end is taken at the next boundary instead (the optimizer step, the next
        #: forward, ``mem.step()`` or the block's end), where memory is what the backward left.
        self.defer_end = False

    def register_user_hooks(
        self,
        on_phase: Callable[[Phase, Phase], None] | None = None,
        on_backward_end: Callable[[], None] | None = None,
    ) -> None:
        """Call ``on_phase(previous, new)`` at each change and ``on_backward_end()`` after each
        backward pass (before the phase goes back to idle)."""
        if on_phase is not None:
            self._phase_listeners.append(on_phase)
        if on_backward_end is not None:
            self._backward_end_listeners.append(on_backward_end)

    def set_phase(self, phase: Phase) -> None:
        """Enter ``phase``; samples at forward start, forward end and backward end."""
        state = self.state
        previous = state.phase
        if phase is previous:
            return
        if previous is Phase.FORWARD and phase is Phase.IDLE:
            # the forward's end: what it kept is split while still in the forward (fast mode's
            # residual is activations there, not the temporaries of an idle moment)
            self.history.sample(previous)
        if phase is Phase.FORWARD:
            if state.autocast_dtype is None:
                self._probe_autocast()
            state.microbatch += 1  # each forward of the outermost module is a micro-batch
        state.phase = phase
        if phase is Phase.FORWARD:
            self.history.sample()
        elif phase is Phase.IDLE and previous is Phase.BACKWARD:
            self.history.sample(previous)
        for listener in self._phase_listeners:
            listener(previous, phase)

    def forward_starts(self) -> None:
        """The outermost module's forward starts (outside any backward pass)."""
        phase = self.state.phase
        if phase is not Phase.FORWARD and graph_task_id() == -1:
            if phase is Phase.BACKWARD:
                self._backward_done()  # a deferred end (micro-batches: backward, forward...)
            self.set_phase(Phase.FORWARD)

    def forward_ends(self) -> None:
        """The outermost module's forward ended: idle again unless a backward pass runs."""
        if not self.state.backward_stack and graph_task_id() == -1:
            self.set_phase(Phase.IDLE)

    def enter_backward(self) -> None:
        """A backward pass started: the phase changes and its end is awaited."""
        self.state.saw_backward = True
        self.set_phase(Phase.BACKWARD)
        if not self._callback_queued and not self.defer_end:
            try:
                torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)
                self._callback_queued = True
            except RuntimeError:
                pass  # not inside a backward pass after all

    def _backward_done(self) -> None:
        try:
            self._callback_queued = False
            for listener in self._backward_end_listeners:
                listener()
            self.state.ledger.module = None
            self.hooks.remove(TENSOR_HOOKS)
            if self.state.phase is Phase.BACKWARD:
                self.set_phase(Phase.IDLE)
        except Exception as error:
            self.guard.fail(Part.BACKWARD_END, error)

    def finish_backward(self) -> None:
        """End a backward pass whose end callback has not run yet (the optimizer step starts,
        a step or the block ends)."""
        if self.state.phase is Phase.BACKWARD:
            self._backward_done()

    def reset(self) -> None:
        """Forget a queued backward end (a new block starts)."""
        self._callback_queued = False

    def _probe_autocast(self) -> None:
        state = self.state
        if state.autocast_dtype is None:
            kind = state.device.type if state.device.type in ("cpu", "cuda") else "cpu"
            if torch.is_autocast_enabled(kind):
                state.autocast_dtype = torch.get_autocast_dtype(kind)
