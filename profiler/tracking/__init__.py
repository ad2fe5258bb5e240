"""The engine: where the program is (hooks) and what occupies memory (the ledger), nothing else.

Small parts around one shared :class:`~profiler.tracking.state.EngineState`:

- :mod:`.options`: the tracker's options, validated, and resolved at entry (device, mode, rounding).
- :mod:`.guard`: the failure guard: a part that raises is switched off with one warning.
- :mod:`.hooks`: every hook handle in at entry, every one out at exit.
- :mod:`.phases`: phases, backward start and end, compile step-aside, phase listeners.
- :mod:`.known`: the known tensors: weights, buffers, gradients, optimizer state, KV cache.
- :mod:`.exact` / :mod:`.fast`: the two strategies that measure the rest (one at a time).
- :mod:`.history`: bounded samples, steps and events, fanned out to observers.
- :mod:`.capture`: the out-of-memory :class:`~profiler.records.Failure`, built in one place.
- :mod:`.engine`: wires the parts together for one ``with`` block.

The engine imports records, errors, units, the ledger, the KV-cache recogniser and the device
backends; never an analyser (an import-linter contract checks it).
"""

from __future__ import annotations

from profiler.tracking.engine import Engine
from profiler.tracking.options import Options
from profiler.tracking.state import Mode

__all__ = ["Engine", "Mode", "Options"]
