"""A leak hunt in progress: the steps it covers, how it measures, the tensors born during it.

When growth is suspected the detector asks the run to record creation sites for a few steps
(:meth:`~profiler.run.RunControl.hunt`; in fast mode that switches the exact ledger on for those
steps, whose figures are then kept in a series of their own). During the hunt it takes a census
of the Python tensor objects at its start and before its last step: a tensor new in the second
census and still alive at the end was born in a hunt step and outlived it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from profiler.leaks.culprit import TOTAL
from profiler.leaks.growth import GrowthSeries, GrowthTest
from profiler.leaks.holders import tensor_refs
from profiler.records import CATEGORIES

__all__ = ["SERIES", "Hunt"]

#: The growth series the detector watches: one per category, and the total.
SERIES: tuple[str, ...] = (*(str(c) for c in CATEGORIES), TOTAL)


@dataclass(slots=True)
class Hunt:
    """One leak hunt: from the step it started at to ``end`` (moved on while growth is unsure)."""

    #: the step at whose end the hunt started, and the step at whose end it is judged
    start: int
    end: int
    #: how it searches, for the leak's evidence ("exact mode on for 3 steps")
    description: str
    #: fast mode: the exact figures of the hunt steps, kept apart from the fast ones
    series: GrowthSeries | None
    #: whether tensor objects are followed (census at the start, births before the end)
    scan: bool
    base: dict[int, weakref.ref[Any]] = field(default_factory=dict)
    births: dict[int, tuple[weakref.ref[Any], int]] = field(default_factory=dict)

    @classmethod
    def begin(cls, step: int, steps: int, *, fast: bool, test: GrowthTest, scan: bool) -> Hunt:
        """A hunt of ``steps`` steps after ``step`` (``fast``: the run is in fast mode); no census yet."""
        series = None
        if fast:
            hunt_test = GrowthTest(
                window=2 * steps,
                warmup=0,
                min_bytes_per_step=test.min_bytes_per_step,
                min_tau=test.min_tau,
                recent=min(test.recent, steps),
                min_points=steps,
            )
            series = GrowthSeries(SERIES, hunt_test)
        description = (
            f"exact mode on for {steps} steps"
            if fast
            else f"creation sites recorded for {steps} steps"
        )
        return cls(step, step + steps, description, series, scan)

    def take_census(self) -> None:
        """Note the tensor objects alive now (at the hunt's start)."""
        if self.scan:
            self.base = tensor_refs()
            self.births = {}

    def note_births(self, step: int) -> None:
        """Note the tensor objects alive now that were not at the hunt's start, as born at ``step``."""
        if not self.scan:
            return
        base = self.base
        births = self.births
        for key, ref in tensor_refs().items():
            old = base.get(key)
            if old is not None and old() is ref():
                continue
            born = births.get(key)
            if born is not None and born[0]() is ref():
                continue
            births[key] = (ref, step)

    def survivors(self, step: int) -> list[Any]:
        """The tensors born before ``step`` during the hunt and still alive."""
        survivors = []
        for ref, born in self.births.values():
            tensor = ref()
            if tensor is not None and born < step:
                survivors.append(tensor)
        return survivors
