"""The leak detector: an observer that confirms growth, hunts for its holder and raises alerts.

It reads the run only through :class:`~profiler.run.TrackedRun`: the run's facts
(``run.info.mode``, ``.capacity``, ``.kv_cache_reused``), ``run.device_total``, ``run.model``,
``run.kv_caches()`` and ``run.live_storages()``; it asks for a hunt with ``run.hunt(steps)`` and
publishes alerts with ``run.emit(event)``. Without a run (offline: feed :meth:`on_step` by hand)
it flags growth without a hunt or a culprit.
"""

from __future__ import annotations

import warnings
from collections import deque

from profiler.frames import user_stacklevel
from profiler.leaks.culprit import TOTAL, Findings, build_leak, merge_by_site
from profiler.leaks.growth import GrowthEstimate, GrowthSeries, GrowthTest
from profiler.leaks.holders import find_holders, hook_codes
from profiler.leaks.hunt import SERIES, Hunt
from profiler.leaks.records import Holder, Leak
from profiler.leaks.source import display_site
from profiler.records import CATEGORIES, Category, Event, EventKind, LiveStorage, StepRecord
from profiler.run import Observer, TrackedRun

__all__ = ["LeakDetector"]

_KV = CATEGORIES.index(Category.KV_CACHE)


class LeakDetector(Observer):
    """A run observer that confirms growth, hunts for its holder and raises leak alerts.

    Args:
        run: the run to read and ask for hunts; ``None`` until :meth:`on_start` binds one, or
            for offline use (feed :meth:`on_step` by hand: no hunt, no culprit).
        test: the growth thresholds (window, warm-up, noise floor, ...).
        hunt_steps: how many steps a leak hunt records creation sites for.
        max_hunts: at most this many hunts per session (each costs a few exact-mode steps).
        scan_objects: follow surviving tensors back to their holders (garbage-collector walk).
    """

    def __init__(
        self,
        run: TrackedRun | None = None,
        *,
        test: GrowthTest | None = None,
        hunt_steps: int = 3,
        max_hunts: int = 4,
        scan_objects: bool = True,
    ) -> None:
        self.run = run
        self.test = test or GrowthTest()
        self.hunt_steps = max(2, hunt_steps)
        self.max_hunts = max_hunts
        self.scan_objects = scan_objects
        #: confirmed leaks still growing
        self.leaks: list[Leak] = []
        #: leaks that stopped growing (plateaued) after being confirmed
        self.cleared: list[Leak] = []
        self.hunts = 0
        self._series = GrowthSeries(SERIES, self.test)
        self._durations: deque[float] = deque(maxlen=self.test.window)
        self._hunt: Hunt | None = None
        self._cooldown_until = -1
        self._warned: set[str] = set()
        self._last: StepRecord | None = None
        #: the lines that fed the run's KV caches, found by the last hunt that saw one grow
        self._kv_holders: list[Holder] = []
        #: leaks found in fast mode are watched on the fast total, not on their category
        self._fast_leaks: set[int] = set()

    # ------------------------------------------------------------------ observer

    def on_start(self, run: TrackedRun) -> None:
        """Bind the run whose steps are fed to :meth:`on_step`."""
        self.run = run

    def on_step(self, record: StepRecord) -> None:
        """Feed one step end: update the growth test, run or finish a hunt, raise alerts."""
        self._last = record
        self._durations.append(record.duration)
        values = self._values(record)
        hunt = self._hunt
        if hunt is not None and hunt.series is not None:
            # fast mode with the exact ledger on: other figures, kept in their own series
            hunt.series.add(record.step, values)
        elif not self._series.add(record.step, values):
            return
        elif self.leaks:
            self._clear_plateaued(record)
        if hunt is not None:
            if record.step == hunt.end - 1:
                # one census before the last hunt step is enough: what it finds new and the
                # last step still has alive was born in a hunt step and outlived it
                hunt.note_births(record.step)
            if record.step >= hunt.end:
                self._finish_hunt(record, hunt)
            return
        growing = self._series.growing()
        if not growing:
            return  # (the steady state: nothing to look at)
        new = self._uncovered(growing)
        if not new:
            return
        if self.run is not None and self.hunts < self.max_hunts:
            if record.step >= self._cooldown_until:
                self._start_hunt(record, self.run)
            return
        confirmed = [g for g in new if g.points >= self.test.window]
        if confirmed:
            self._report(record, confirmed, self._findings())

    def on_close(self, run: TrackedRun, exc: BaseException | None) -> None:
        """At the end of the block: finish a hunt still running if the growth is confirmed."""
        record = self._last
        hunt = self._hunt
        if hunt is not None and record is not None and record.step > hunt.start:
            self._finish_hunt(record, hunt)
        self._reset_hunt()

    def _values(self, record: StepRecord) -> tuple[int, ...]:
        """The step's bytes per series (:data:`~profiler.leaks.hunt.SERIES` order)."""
        run = self.run
        kv = record.bytes[_KV]
        # (run.info builds a record: read only when there is a cache to leave out)
        if run is None or not kv or run.info.kv_cache_reused:
            return (*record.bytes, record.total)
        # A cache that only grows within a generation (steps may end per generated token) is
        # no leak: leave it out until a prompt is fed to a cache that was not reset.
        return (*record.bytes[:_KV], 0, *record.bytes[_KV + 1 :], record.total - kv)

    # ------------------------------------------------------------------ hunt

    def _uncovered(self, growing: list[GrowthEstimate]) -> list[GrowthEstimate]:
        """The growing series that no known leak explains."""
        if self._fast_leaks and self._hunt is None:
            # fast-mode figures split categories differently from the hunt's exact ones:
            # only growth of the total beyond what the known leaks explain is new
            total = next((g for g in growing if g.series == TOTAL), None)
            explained = sum(leak.bytes_per_step for leak in self.leaks)
            if total is None or total.bytes_per_step - explained < self.test.min_bytes_per_step:
                return []
            return [g for g in growing if g.series != TOTAL] or [total]
        active = {leak.evidence.growth.series for leak in self.leaks}
        active |= {str(leak.category) for leak in self.leaks}
        new = [g for g in growing if g.series not in active]
        if any(g.series != TOTAL for g in new) or (active and new):
            new = [g for g in new if g.series != TOTAL]
        return new

    def _start_hunt(self, record: StepRecord, run: TrackedRun) -> None:
        self.hunts += 1
        fast = run.info.mode == "fast"
        hunt = Hunt.begin(
            record.step, self.hunt_steps, fast=fast, test=self.test, scan=self.scan_objects
        )
        self._hunt = hunt
        # the run counts the step that is ending now: one more covers hunt_steps steps
        run.hunt(self.hunt_steps + 1)
        hunt.take_census()

    def _reset_hunt(self) -> None:
        hunt = self._hunt
        if hunt is not None and hunt.series is not None:
            # fast figures before and after an exact stint differ by a one-off shift: restart
            self._series.reset()
        self._hunt = None

    def _finish_hunt(self, record: StepRecord, hunt: Hunt) -> None:
        """Judge the growth the hunt saw; report it, keep hunting a step, or stand down."""
        growing = (hunt.series if hunt.series is not None else self._series).growing()
        try:
            new = self._uncovered(growing)
            # fast mode: growth seen before the hunt, confirmed by the hunt's exact figures
            needed = self.hunt_steps if hunt.series is not None else self.test.window
            confirmed = [g for g in new if g.points >= needed]
            if confirmed:
                self._report(record, confirmed, self._hunt_findings(record, hunt, confirmed))
            elif not new:
                self._cooldown_until = record.step + self.test.window
            elif record.step < hunt.start + 2 * self.hunt_steps:
                # growing but not yet confirmed: keep hunting one more step at a time
                hunt.end = record.step + 1
                if self.run is not None:
                    self.run.hunt(2)
        finally:
            if hunt.end <= record.step:
                self._reset_hunt()

    def _hunt_findings(
        self, record: StepRecord, hunt: Hunt, confirmed: list[GrowthEstimate]
    ) -> Findings:
        """What the hunt found: live storages, the survivors' holders, the KV cache feeders."""
        run = self.run
        storages = run.live_storages() if run is not None else []
        model = run.model if run is not None else None
        holders: list[Holder] = []
        if self.scan_objects:
            holders = find_holders(hunt.survivors(record.step), model=model)
        self._kv_holders = []
        if run is not None and any(g.series == Category.KV_CACHE for g in confirmed):
            self._kv_holders = find_holders(list(run.kv_caches()), passed=True)
        steps = tuple(range(hunt.start + 1, record.step + 1))
        return self._findings(
            storages=storages, holders=holders, hunt=hunt.description, hunt_steps=steps
        )

    def _findings(
        self,
        *,
        storages: list[LiveStorage] | None = None,
        holders: list[Holder] | None = None,
        hunt: str | None = None,
        hunt_steps: tuple[int, ...] = (),
    ) -> Findings:
        """The hunt's results (none without a hunt) with the run's facts as they are now."""
        run = self.run
        durations = self._durations
        return Findings(
            storages=storages or [],
            holders=holders or [],
            kv_holders=list(self._kv_holders),
            hunt=hunt,
            hunt_steps=hunt_steps,
            hook_codes=frozenset(hook_codes(run.model)) if run is not None else frozenset(),
            capacity=self._capacity(),
            step_seconds=sum(durations) / len(durations) if durations else None,
        )

    # ------------------------------------------------------------------ report

    def _report(
        self, record: StepRecord, confirmed: list[GrowthEstimate], findings: Findings
    ) -> None:
        categories = [g for g in confirmed if g.series != TOTAL] or confirmed
        for leak in merge_by_site(build_leak(record, est, findings) for est in categories):
            self._raise(leak)

    def _capacity(self) -> int | None:
        """The device's capacity (a simulated one counts), ``None`` when unknown."""
        run = self.run
        if run is None:
            return None
        for total in (run.device_total, run.info.capacity):
            if isinstance(total, int) and total > 0:
                return total
        return None

    def _raise(self, leak: Leak) -> None:
        self.leaks.append(leak)
        if self._hunt is not None and self._hunt.series is not None:
            self._fast_leaks.add(id(leak))
        message = leak.describe()
        if self.run is not None:
            self.run.emit(Event(leak.time, leak.step, EventKind.LEAK, message, leak.as_dict()))
        key = leak.site or str(leak.category)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=user_stacklevel())

    def _clear_plateaued(self, record: StepRecord) -> None:
        still = []
        floor = self.test.min_bytes_per_step
        for leak in self.leaks:
            watched = TOTAL if id(leak) in self._fast_leaks else leak.evidence.growth.series
            est = self._series.estimate(watched)
            if est is None or est.growing or est.recent_bytes_per_step >= floor:
                still.append(leak)
                continue
            self.cleared.append(leak)
            if self.run is not None:
                where = display_site(leak.site) or "an unknown line"
                message = f"leak cleared: {leak.category} stopped growing (held at {where})"
                data = {**leak.as_dict(), "cleared": True}
                self.run.emit(Event(record.time, record.step, EventKind.LEAK, message, data))
        self.leaks = still
