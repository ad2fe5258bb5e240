"""Leak patterns: which common mistake a leak is, from what holds it, and the fix for each.

:func:`classify` names the :class:`~profiler.leaks.records.LeakPattern` from the growing
category, the :class:`~profiler.leaks.records.Holder` the hunt found and where the memory was
made; :func:`suggestion_for` gives the fix, naming the holder when it is known. Pure functions.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence

from profiler.leaks.records import CreationSite, Holder, LeakPattern
from profiler.leaks.source import in_codes
from profiler.records import Category

__all__ = ["classify", "pick_holder", "suggestion_for"]


def classify(
    category: Category,
    holder: Holder | None,
    sites: Sequence[CreationSite] = (),
    hook_codes: Iterable[types.CodeType] = (),
) -> LeakPattern:
    """Name the pattern from the growing category, what holds the memory and where it was made."""
    category = Category(category)
    if category == Category.KV_CACHE:
        return LeakPattern.KV_CACHE_NOT_RESET
    if holder is not None:
        if holder.kind == "closure" or holder.in_hook:
            return LeakPattern.HOOK_CLOSURE
        if holder.kind == "attribute" and holder.module_owner:
            return LeakPattern.MODULE_ATTRIBUTE
        if holder.graph:
            return LeakPattern.GRAPH_KEPT
        return LeakPattern.ACCUMULATING_TENSORS
    codes = list(hook_codes)
    if codes and any(in_codes(s.site, codes) for s in sites):
        return LeakPattern.HOOK_CLOSURE
    if category == Category.ACTIVATIONS:
        # activations of finished steps alive: an autograd graph outlives its step
        return LeakPattern.GRAPH_KEPT
    if category in (Category.TEMPORARIES, Category.OTHER):
        return LeakPattern.ACCUMULATING_TENSORS
    return LeakPattern.UNKNOWN


def pick_holder(category: Category, holders: Sequence[Holder]) -> Holder | None:
    """The holder that best explains growth in ``category`` (one keeping a graph for activations)."""
    if not holders:
        return None
    if category in (Category.ACTIVATIONS, Category.TEMPORARIES):
        graph = [h for h in holders if h.graph]
        if graph:
            return graph[0]
    return holders[0]


def suggestion_for(pattern: LeakPattern, holder: Holder | None = None) -> str:
    """The fix for a pattern, naming the holder when it is known."""
    name = f"`{holder.name}`" if holder is not None else "the container"
    graph = holder is not None and holder.graph
    if pattern == LeakPattern.GRAPH_KEPT:
        return (
            f"{name} keeps tensors that still carry their autograd graph, so every step's "
            "activations stay alive: store `loss.item()` (a float) or `tensor.detach()` instead."
        )
    if pattern == LeakPattern.ACCUMULATING_TENSORS:
        return (
            f"tensors are added to {name} every step and never removed: store `.item()` or "
            "`.detach().cpu()` values, keep a bounded window (`collections.deque(maxlen=...)`), "
            "or clear it each step."
        )
    if pattern == LeakPattern.KV_CACHE_NOT_RESET:
        return (
            "the KV cache keeps growing across generations: create a fresh cache "
            "(`DynamicCache()`) or call `cache.reset()` / `cache.crop(0)` before each new "
            "prompt, or pass `past_key_values=None`."
        )
    if pattern == LeakPattern.HOOK_CLOSURE:
        detach = " detach them (`output.detach()`)," if graph else ""
        return (
            f"a hook or closure stores tensors in {name} on every call:{detach} clear it after "
            "each use, keep only the latest, or remove the hook (`handle.remove()`) when done."
        )
    if pattern == LeakPattern.MODULE_ATTRIBUTE:
        with_graph = " with their autograd graph" if graph else ""
        return (
            f"the module attribute {name} stores activations{with_graph} on every forward: keep "
            "only the latest (`self.x = h.detach()`), clear it each step, or return the values "
            "instead of storing them on the module."
        )
    return (
        "memory created during the steps below stays alive; look at the creation sites in "
        "`leak.evidence.creation_sites`."
    )
