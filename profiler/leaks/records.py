"""What the leak detector reports: the patterns it names, and its frozen records.

A :class:`Leak` is the verdict (what grows, how fast, the line holding it, the fix); its
:class:`LeakEvidence` carries the growth estimate, the :class:`CreationSite` groups and the
:class:`Holder` the hunt found. Every record turns into plain JSON-ready data for the session
stream (``as_dict``); the field names there are part of the stream's schema v1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from profiler.leaks.growth import GrowthEstimate
from profiler.leaks.source import display_site
from profiler.records import Category
from profiler.units import format_bytes

__all__ = ["CreationSite", "Holder", "Leak", "LeakEvidence", "LeakPattern"]


class LeakPattern(StrEnum):
    """The common ways a program keeps memory alive across steps."""

    GRAPH_KEPT = "graph_kept"
    ACCUMULATING_TENSORS = "accumulating_tensors"
    KV_CACHE_NOT_RESET = "kv_cache_not_reset"
    HOOK_CLOSURE = "hook_closure"
    MODULE_ATTRIBUTE = "module_attribute"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CreationSite:
    """Storages created at one line in one category that outlive the step that made them."""

    site: str | None
    source: str | None
    category: Category
    module: str | None
    bytes_per_step: int
    storages: int
    steps: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data for the session stream."""
        return {
            "site": self.site,
            "source": self.source,
            "category": str(self.category),
            "module": self.module,
            "bytes_per_step": self.bytes_per_step,
            "storages": self.storages,
        }


@dataclass(frozen=True, slots=True)
class Holder:
    """The Python object that keeps leaked tensors alive, and the line that adds to it."""

    #: ``local``, ``global``, ``closure`` or ``attribute``
    kind: str
    #: the variable or attribute name (``losses``, ``Net.features``)
    name: str
    #: the function (local, closure) or class (attribute) it belongs to
    owner: str | None
    #: type name of the container (``list``, ``dict``, ``Tensor``)
    container: str
    #: "path/to/file.py:LINE" of the statement that adds to it, when found
    site: str | None
    source: str | None
    #: how many leaked tensors it holds, and their storages' bytes (each storage once)
    tensors: int
    nbytes: int
    #: whether some of them still carry an autograd graph (``grad_fn``)
    graph: bool
    #: whether the adding statement runs inside a registered module hook
    in_hook: bool
    #: whether the owner of an attribute is a ``torch.nn.Module``
    module_owner: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data for the session stream."""
        return {
            "kind": self.kind,
            "name": self.name,
            "owner": self.owner,
            "container": self.container,
            "site": self.site,
            "tensors": self.tensors,
            "bytes": self.nbytes,
            "graph": self.graph,
        }


@dataclass(frozen=True, slots=True)
class LeakEvidence:
    """What the detector saw: the growth, the creation sites and the holder."""

    growth: GrowthEstimate
    creation_sites: tuple[CreationSite, ...]
    holder: Holder | None
    #: how the culprit was searched ("exact mode on for 3 steps", ...), ``None`` without a hunt
    hunt: str | None
    #: the steps the hunt covered
    hunt_steps: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data for the session stream."""
        g = self.growth
        return {
            "series": g.series,
            "slope": g.bytes_per_step,
            "recent_slope": g.recent_bytes_per_step,
            "tau": round(g.tau, 3),
            "window": [g.first_step, g.last_step],
            "current": g.current,
            "creation_sites": [c.as_dict() for c in self.creation_sites],
            "holder": None if self.holder is None else self.holder.as_dict(),
            "hunt": self.hunt,
            "hunt_steps": list(self.hunt_steps),
        }


@dataclass(frozen=True, slots=True)
class Leak:
    """A confirmed leak: what grows, how fast, the line that holds it and how to fix it."""

    category: Category
    bytes_per_step: int
    #: "path/to/file.py:LINE" in the user's code, ``None`` when no line could be found
    site: str | None
    pattern: LeakPattern
    suggestion: str
    evidence: LeakEvidence
    #: the source text of ``site``
    source: str | None = None
    #: the step at whose end it was confirmed, and that step's wall time
    step: int = 0
    time: float = 0.0
    #: the capacity it is heading for, and the step and wall time at which it will reach it
    capacity: int | None = None
    capacity_step: int | None = None
    capacity_time: float | None = None

    def describe(self) -> str:
        """One line for a warning or the stream: what, how fast, where, and the fix."""
        where = display_site(self.site) or "an unknown line"
        if self.source:
            where += f" `{self.source}`"
        text = (
            f"memory leak: {self.category} grows {format_bytes(self.bytes_per_step)} per step, "
            f"held at {where} ({self.pattern.value.replace('_', ' ')}). {self.suggestion}"
        )
        if self.capacity_step is not None and self.capacity is not None:
            text += f" At this rate {format_bytes(self.capacity)} is reached at step "
            text += f"{self.capacity_step}"
            if self.capacity_time is not None:
                text += f" (in {max(self.capacity_time - self.time, 0.0):.0f} s)"
            text += "."
        if self.evidence.hunt:
            text += f" Found by a leak hunt ({self.evidence.hunt})."
        return text

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data for the session stream."""
        return {
            "category": str(self.category),
            "bytes_per_step": self.bytes_per_step,
            "site": self.site,
            "source": self.source,
            "pattern": str(self.pattern),
            "suggestion": self.suggestion,
            "step": self.step,
            "capacity": self.capacity,
            "capacity_step": self.capacity_step,
            "capacity_time": self.capacity_time,
            "evidence": self.evidence.as_dict(),
        }

    def _repr_html_(self) -> str:
        """The leak as HTML for notebooks (:func:`profiler.notebook.leak_html`)."""
        from profiler.notebook import leak_html

        return leak_html(self)
