"""Leak detection across steps: which category grows, and which line of the user's code holds it.

The :class:`LeakDetector` is a run observer (:class:`~profiler.run.Observer`) fed one
:class:`~profiler.records.StepRecord` per step end; it reads the run only through
:class:`~profiler.run.TrackedRun`. It works in three stages:

1. **Growth** (:mod:`profiler.leaks.growth`): a robust trend test per category and on the
   total, over the last ``window`` step ends after warm-up. Excluded: the first ``warmup`` steps (optimizer
   state, lazily initialised modules, allocator warm-up), growth below the noise floor
   (64 KiB per step by default), series that go up and down (Mann–Kendall tau below 0.6), and
   memory that has stopped growing for the last ``recent`` steps (a plateau clears the alert).
2. **Leak hunt**: as soon as three post-warm-up step ends suggest growth, the detector asks the
   run to record creation sites for ``hunt_steps`` steps (``run.hunt``; in fast mode that
   switches the exact ledger on for those steps only, and the alert says so). During the
   hunt it also notes which Python tensor objects are born in each step.
3. **Culprit**: at the hunt's end, storages created in one step of the hunt and still alive
   steps later are grouped by creation site (file:line in the user's code, the source text,
   category, bytes per step). The tensor objects born during the hunt and still alive are
   followed back through the garbage collector's referrers to what holds them: a local or global
   list or dict, a closure cell of a hook, a module attribute. The line that adds to that holder
   (``losses.append(loss)``) is found in the source with :mod:`ast` and becomes the leak's
   ``site``; without a holder (a KV cache whose tensors are replaced as they grow) the creation
   site is used. The pattern and its fix follow from the holder, the category and whether the
   tensors still carry an autograd graph.

A confirmed leak becomes a :class:`Leak` in ``detector.leaks`` (``mem.leaks()``), an event of
kind ``leak`` in the session stream (``gpumem top`` shows it) and one ``warnings.warn`` per site.

Overhead: outside a hunt, one growth test per step end: O(window² × 9) comparisons, well under
a millisecond (``benchmarks/leaks.py``: under 0.01% of a big-ops CPU step). A hunt walks
``gc.get_objects()`` twice (at its start and before its last step) and the referrers of the
surviving tensors once at its end: a fraction of a second in a program with ~300k Python
objects, paid on at most ``max_hunts`` hunts per session and only after growth is suspected.

Known limits: a cache with a cap that fills for longer than ``window`` steps is reported until it
plateaus, then cleared; a KV cache that grows within one generation (steps may end per generated
token) is left out of the growth test until a prompt is fed to a cache that already holds
positions (``run.info.kv_cache_reused``: then a growing cache is the not-reset pattern, and a
conversation that deliberately keeps its cache looks the same); a tensor that grows in place by
reassignment (``self.x = torch.cat(...)``) has no surviving old storage, so its site is the
creation site of the newest storage; a holder reached only through C++ objects (the autograd
graph itself) is found through the Python tensor that owns that graph.

The package, one part per module:

- :mod:`~profiler.leaks.records`: :class:`Leak`, :class:`LeakEvidence`, :class:`CreationSite`,
  :class:`Holder`, :class:`LeakPattern`
- :mod:`~profiler.leaks.growth`: the trend test (stage 1)
- :mod:`~profiler.leaks.source`: "file:LINE" sites, their text, the lines that add to a name
- :mod:`~profiler.leaks.sites`: creation sites (live storages grouped by the line that made them)
- :mod:`~profiler.leaks.holders`: the holder search and the tensor census
- :mod:`~profiler.leaks.patterns`: the pattern of a leak and its fix
- :mod:`~profiler.leaks.culprit`: from a confirmed growth and a hunt's findings to a :class:`Leak`
- :mod:`~profiler.leaks.hunt` and :mod:`~profiler.leaks.detector`: the observer (stages 2 and 3)

Which frames are the user's code is decided by :mod:`profiler.frames`, the rule the ledger's
creation sites use too.
"""

from __future__ import annotations

from profiler.leaks.detector import LeakDetector
from profiler.leaks.growth import GrowthEstimate, GrowthSeries, GrowthTest
from profiler.leaks.holders import find_holders
from profiler.leaks.patterns import classify, suggestion_for
from profiler.leaks.records import CreationSite, Holder, Leak, LeakEvidence, LeakPattern
from profiler.leaks.sites import creation_sites
from profiler.leaks.source import mutation_lines

__all__ = [
    "CreationSite",
    "GrowthEstimate",
    "GrowthSeries",
    "GrowthTest",
    "Holder",
    "Leak",
    "LeakDetector",
    "LeakEvidence",
    "LeakPattern",
    "classify",
    "creation_sites",
    "find_holders",
    "mutation_lines",
    "suggestion_for",
]
