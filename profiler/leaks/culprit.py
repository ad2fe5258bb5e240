"""From a confirmed growth and what a hunt found to a :class:`~profiler.leaks.records.Leak`.

A growth estimate says what grows and how fast; the hunt's live storages say which lines made the
memory (:func:`~profiler.leaks.sites.creation_sites`), its holders what keeps it. This module
picks the line to report (the line that adds to the holder, else the creation site), the pattern
and its fix, and when the growth reaches the device's capacity. Pure functions of records.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from profiler.leaks.growth import GrowthEstimate
from profiler.leaks.patterns import classify, pick_holder, suggestion_for
from profiler.leaks.records import CreationSite, Holder, Leak, LeakEvidence, LeakPattern
from profiler.leaks.sites import creation_sites
from profiler.leaks.source import source_of
from profiler.records import Category, LiveStorage, StepRecord

__all__ = ["TOTAL", "Findings", "build_leak", "growth_sites", "merge_by_site"]

#: The growth series of the total (the others are named by their category).
TOTAL = "total"


@dataclass(frozen=True, slots=True)
class Findings:
    """What the detector knows when it confirms growth: the hunt's results and the run's facts."""

    #: the run's live storages at the hunt's end (with their creation sites)
    storages: Sequence[LiveStorage] = ()
    #: what holds the tensors born during the hunt, best first
    holders: Sequence[Holder] = ()
    #: the lines that feed the run's KV caches (holders searched with ``passed=True``)
    kv_holders: Sequence[Holder] = ()
    #: how the hunt searched ("exact mode on for 3 steps"), ``None`` without a hunt
    hunt: str | None = None
    #: the steps the hunt covered (empty without a hunt)
    hunt_steps: tuple[int, ...] = ()
    #: code objects of the module hooks registered now
    hook_codes: frozenset[types.CodeType] = frozenset()
    #: the device's capacity (bytes), and the mean seconds per step, where known
    capacity: int | None = None
    step_seconds: float | None = None


def growth_sites(
    est: GrowthEstimate, category: Category | None, findings: Findings, step: int
) -> list[CreationSite]:
    """The creation sites that explain ``est``: storages made in a hunt step and still alive.

    Storages replaced as they grow (a KV cache, ``x = torch.cat(...)``) leave no old storage
    alive: then the newest storages, each site charged its share of the measured growth.
    """
    hunt_steps = findings.hunt_steps
    if not hunt_steps:
        return []
    cats = None if category is None else [category]
    storages = findings.storages
    sites: list[CreationSite] = []
    old_steps = [s for s in hunt_steps if s < step]
    if old_steps:
        sites = creation_sites(
            storages,
            first_step=old_steps[0],
            last_step=old_steps[-1],
            categories=cats,
            steps=len(old_steps),
        )
    if any(s.site for s in sites):
        return sites
    newest = creation_sites(
        storages, first_step=hunt_steps[0], last_step=step, categories=cats, steps=1
    )
    held = sum(s.bytes_per_step for s in newest)
    if not newest or held <= 0:
        return sites
    return [
        dataclasses.replace(s, bytes_per_step=est.bytes_per_step * s.bytes_per_step // held)
        for s in newest
    ]


def _culprit(
    pattern: LeakPattern,
    holder: Holder | None,
    sites: Sequence[CreationSite],
    kv_holders: Sequence[Holder],
) -> tuple[Holder | None, str | None]:
    """The holder to report and the line to name for it."""
    created = next((s.site for s in sites if s.site), None)
    if pattern == LeakPattern.KV_CACHE_NOT_RESET:
        # the creation site is the call that feeds the cache; else the line passing it
        holder = kv_holders[0] if kv_holders else None
        if created is None and holder is not None:
            return holder, holder.site
        return holder, created
    if holder is not None and holder.site:
        return holder, holder.site
    return holder, created


def _reach(
    record: StepRecord, rate: int, capacity: int | None, step_seconds: float | None
) -> tuple[int | None, float | None]:
    """The step and wall time at which growing ``rate`` bytes a step reaches ``capacity``."""
    if capacity is None or rate <= 0:
        return None, None
    left = capacity - max(record.peak, record.total)
    steps_left = max(0, math.ceil(left / rate))
    when = record.time + steps_left * step_seconds if step_seconds is not None else None
    return record.step + steps_left, when


def build_leak(record: StepRecord, est: GrowthEstimate, findings: Findings) -> Leak:
    """The leak that explains the growth ``est``, confirmed at the end of ``record``'s step."""
    category: Category | None = Category(est.series) if est.series != TOTAL else None
    sites = growth_sites(est, category, findings, record.step)
    if category is None:
        category = sites[0].category if sites else Category.OTHER
    holder = pick_holder(category, findings.holders)
    pattern = classify(category, holder, sites, findings.hook_codes)
    holder, site = _culprit(pattern, holder, sites, findings.kv_holders)
    rate = est.bytes_per_step
    capacity_step, capacity_time = _reach(record, rate, findings.capacity, findings.step_seconds)
    evidence = LeakEvidence(
        growth=est,
        creation_sites=tuple(sites[:8]),
        holder=holder,
        hunt=findings.hunt if findings.hunt_steps else None,
        hunt_steps=findings.hunt_steps,
    )
    return Leak(
        category=category,
        bytes_per_step=rate,
        site=site,
        pattern=pattern,
        suggestion=suggestion_for(pattern, holder),
        evidence=evidence,
        source=source_of(site),
        step=record.step,
        time=record.time,
        capacity=findings.capacity,
        capacity_step=capacity_step,
        capacity_time=capacity_time,
    )


def merge_by_site(leaks: Iterable[Leak]) -> list[Leak]:
    """One leak per site: several growing categories held at one line are one leak.

    The merged leak is the larger category's, growing by the sum of the rates.
    """
    merged: dict[str, Leak] = {}
    for leak in leaks:
        key = leak.site or str(leak.category)
        previous = merged.get(key)
        if previous is None:
            merged[key] = leak
            continue
        big, small = (
            (previous, leak)
            if previous.bytes_per_step >= leak.bytes_per_step
            else (
                leak,
                previous,
            )
        )
        merged[key] = dataclasses.replace(
            big, bytes_per_step=big.bytes_per_step + small.bytes_per_step
        )
    return list(merged.values())
