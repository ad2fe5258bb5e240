"""Fix suggestions sized from what was measured: each says how many bytes it saves and whether
the run then fits.

The model of the run is a handful of *moments* (the bytes per category at each sample, at each
step's peak, at the overall peak and at the failure), each split into a part that does not depend
on the batch size (weights, buffers, gradients, optimizer state, temporaries outside forward and
backward, other) and a part that grows with it (activations, KV cache, and the temporaries of
forward and backward). The peak after a change is the highest moment after applying the change
to every moment; a change saves ``peak_now - peak_after`` bytes and fits when
``peak_after + overhead <= capacity``.

Steady state: a stateful optimizer creates its state in the first step, so every moment is
charged at least the full optimizer state (the larger of the measured one and the prediction
from the optimizer's class), and the optimizer step is charged every gradient. That projection is
exact when the moment that sets the peak was measured (the common OOM in the second step); an
OOM in the middle of the very first forward has seen only part of the activations, so the
projection is then an upper bound. Suggestions are therefore verified by replaying the step on
fake tensors with the change applied (:mod:`.verify`, with a replay function handed in by the
facade): only a replayed suggestion says ``fits=True``.

The parts: :mod:`.facts` (what advice reads and writes), :mod:`.projection` (the peak after a
change), :mod:`.suggestions` (each change, and :func:`rank`), :mod:`.verify` (replayed peaks), :mod:`.reading` (a run read through
:class:`~profiler.run.RunView` into :class:`RunFacts`, and :func:`suggest`). Everything but
:mod:`.reading` is a pure function of :class:`RunFacts`: no pandas, no device access.
"""

from __future__ import annotations

from profiler.advice.facts import Moment, RunFacts, Suggestion
from profiler.advice.projection import largest_batch, peak_after
from profiler.advice.reading import facts_from_run, suggest
from profiler.advice.suggestions import KINDS, rank

__all__ = [
    "KINDS",
    "Moment",
    "RunFacts",
    "Suggestion",
    "facts_from_run",
    "largest_batch",
    "peak_after",
    "rank",
    "suggest",
]
