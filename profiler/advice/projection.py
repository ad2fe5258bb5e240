"""The projection: the tracked peak after a change, over every measured moment.

A change multiplies each category's fixed and batch-scaling bytes by a factor (and may add bytes,
or free some of the device's overhead); the peak after it is the highest moment after applying
it to every moment, with the optimizer state charged in full (the steady state).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from profiler.advice.facts import INDEX, N_CATEGORIES, RunFacts
from profiler.records import Category

__all__ = ["NO_CHANGE", "Change", "factors", "largest_batch", "largest_fraction", "peak_after"]


@dataclass(frozen=True, slots=True)
class Change:
    """Multiplicative factors on the fixed and the scaling bytes of each category."""

    fixed: tuple[float, ...] = (1.0,) * N_CATEGORIES
    scaling: tuple[float, ...] = (1.0,) * N_CATEGORIES
    extra: int = 0
    overhead_saved: int = 0


def factors(**by_name: float) -> tuple[float, ...]:
    """Per-category factors: 1.0 except the categories named (``activations=0.5``)."""
    values = [1.0] * N_CATEGORIES
    for name, factor in by_name.items():
        values[INDEX[Category(name)]] = factor
    return tuple(values)


#: The run as measured.
NO_CHANGE = Change()


def steady(facts: RunFacts) -> list[tuple[list[int], list[int]]]:
    """Each moment split in fixed and scaling bytes, charged the full optimizer state."""
    o = INDEX[Category.OPTIMIZER]
    result = []
    for moment in facts.moments:
        fixed, scaling = moment.fixed_and_scaling()
        if fixed[o] < facts.optimizer_bytes:
            fixed[o] = facts.optimizer_bytes
        result.append((fixed, scaling))
    if facts.training and facts.moments:
        # The optimizer step: every gradient and the whole state, whether or not it was seen.
        w, b = INDEX[Category.WEIGHTS], INDEX[Category.BUFFERS]
        g = INDEX[Category.GRADIENTS]
        fixed = [0] * N_CATEGORIES
        fixed[w] = max(m.bytes[w] for m in facts.moments)
        fixed[b] = max(m.bytes[b] for m in facts.moments)
        fixed[g] = facts.gradient_bytes
        fixed[o] = facts.optimizer_bytes
        result.append((fixed, [0] * N_CATEGORIES))
    return result


def peak_after(facts: RunFacts, change: Change = NO_CHANGE) -> int:
    """The tracked peak (without ``overhead``) after ``change``, over every moment."""
    best = 0
    for fixed, scaling in steady(facts):
        total = float(change.extra)
        for i in range(N_CATEGORIES):
            total += fixed[i] * change.fixed[i] + scaling[i] * change.scaling[i]
        best = max(best, math.ceil(round(total, 6)))
    return best


def largest_batch(facts: RunFacts, capacity: int, *, limit: int = 1 << 24) -> int:
    """The largest batch whose projected peak fits ``capacity`` (0 if not even one sample fits).

    Exact integer arithmetic: batch ``b`` fits when, at every moment,
    ``fixed + scaling * b / batch <= capacity - overhead``.
    """
    batch = facts.batch
    if not batch:
        return 0
    available = capacity - facts.overhead
    best = limit
    for fixed, scaling in steady(facts):
        room = available - sum(fixed)
        if room < 0:
            return 0
        grows = sum(scaling)
        if grows > 0:
            best = min(best, room * batch // grows)
    return max(best, 0)


def largest_fraction(
    facts: RunFacts, capacity: int, change_for: Callable[[float], Change]
) -> float:
    """The largest factor in [0, 1] (to 1/1000) whose change fits, by bisection."""
    if peak_after(facts, change_for(1.0)) + facts.overhead <= capacity:
        return 1.0
    lo, hi = 0.0, 1.0
    if peak_after(facts, change_for(0.0)) + facts.overhead > capacity:
        return 0.0
    for _ in range(20):
        mid = (lo + hi) / 2
        if peak_after(facts, change_for(mid)) + facts.overhead <= capacity:
            lo = mid
        else:
            hi = mid
    return math.floor(lo * 1000) / 1000
