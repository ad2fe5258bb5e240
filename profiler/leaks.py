"""Leak detection across steps: which category grows, and which line of the user's code holds it.

The :class:`LeakDetector` is a tracker observer fed one :class:`~profiler.records.StepRecord` per
step end. It works in three stages:

1. **Growth** (:mod:`profiler.growth`): a robust trend test per category and on the total, over
   the last ``window`` step ends after warm-up. Excluded: the first ``warmup`` steps (optimizer
   state, lazily initialised modules, allocator warm-up), growth below the noise floor
   (64 KiB per step by default), series that go up and down (Mann–Kendall tau below 0.6), and
   memory that has stopped growing for the last ``recent`` steps (a plateau clears the alert).
2. **Leak hunt**: as soon as three post-warm-up step ends suggest growth, the detector asks the
   tracker to record creation sites for ``hunt_steps`` steps (``tracker.hunt``; in fast mode
   that switches the exact ledger on for those steps only, and the alert says so). During the
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
positions (``tracker.kv_cache_reused``: then a growing cache is the not-reset pattern, and a
conversation that deliberately keeps its cache looks the same); a tensor that grows in place by
reassignment (``self.x = torch.cat(...)``)
has no surviving old storage, so its site is the creation site of the newest storage; a holder
reached only through C++ objects (the autograd graph itself) is found through the Python tensor
that owns that graph.
"""

from __future__ import annotations

import ast
import gc
import linecache
import math
import os
import sys
import types
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from profiler.growth import GrowthEstimate, GrowthSeries, GrowthTest
from profiler.records import CATEGORIES, Category, Event, EventKind, StepRecord
from profiler.units import format_bytes

__all__ = [
    "CreationSite",
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

TOTAL = "total"
_KV = CATEGORIES.index(Category.KV_CACHE)
_SERIES: tuple[str, ...] = (*(str(c) for c in CATEGORIES), TOTAL)
_MUTATORS = frozenset(
    {
        "append",
        "extend",
        "insert",
        "add",
        "update",
        "setdefault",
        "appendleft",
        "extendleft",
        "put",
        "put_nowait",
        "__setitem__",
    }
)
_CONTAINERS = (list, tuple, set, frozenset, deque, dict)


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
        holder = self.holder
        return {
            "series": g.series,
            "slope": g.bytes_per_step,
            "recent_slope": g.recent_bytes_per_step,
            "tau": round(g.tau, 3),
            "window": [g.first_step, g.last_step],
            "current": g.current,
            "creation_sites": [
                {
                    "site": c.site,
                    "source": c.source,
                    "category": str(c.category),
                    "module": c.module,
                    "bytes_per_step": c.bytes_per_step,
                    "storages": c.storages,
                }
                for c in self.creation_sites
            ],
            "holder": None
            if holder is None
            else {
                "kind": holder.kind,
                "name": holder.name,
                "owner": holder.owner,
                "container": holder.container,
                "site": holder.site,
                "tensors": holder.tensors,
                "bytes": holder.nbytes,
                "graph": holder.graph,
            },
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
        where = _display_site(self.site) or "an unknown line"
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


# ====================================================================== sources and sites


def _display_site(site: str | None) -> str | None:
    """``site`` with its path relative to the working directory when it lies inside it."""
    if not site:
        return site
    filename, _, line = site.rpartition(":")
    if os.path.isabs(filename):
        try:
            relative = os.path.relpath(filename)
        except ValueError:  # another drive on Windows
            return site
        if not relative.startswith(os.pardir):
            return f"{relative}:{line}"
    return site


def _source_of(site: str | None) -> str | None:
    """The stripped source line of "file:LINE" (``None`` when unreadable)."""
    if not site:
        return None
    filename, _, line = site.rpartition(":")
    if not line.isdigit():
        return None
    text = linecache.getline(filename, int(line)).strip()
    return text or None


def _split_site(site: str) -> tuple[str, int] | None:
    filename, _, line = site.rpartition(":")
    return (filename, int(line)) if line.isdigit() else None


_AST_CACHE: dict[str, tuple[float, ast.AST | None]] = {}


def _parse(filename: str) -> ast.AST | None:
    """The parsed module at ``filename`` (cached by modification time), ``None`` if unreadable."""
    try:
        mtime = os.stat(filename).st_mtime
    except OSError:
        mtime = -1.0
    cached = _AST_CACHE.get(filename)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    text = "".join(linecache.getlines(filename))
    tree: ast.AST | None
    try:
        tree = ast.parse(text) if text else None
    except SyntaxError:
        tree = None
    _AST_CACHE[filename] = (mtime, tree)
    return tree


def _is_ref(node: ast.AST, name: str, attribute: bool) -> bool:
    while isinstance(node, ast.Subscript):  # name["key"].append(x) adds to name too
        node = node.value
    if attribute:
        return isinstance(node, ast.Attribute) and node.attr == name
    return isinstance(node, ast.Name) and node.id == name


def _mentions(node: ast.AST, name: str, attribute: bool) -> bool:
    return any(_is_ref(n, name, attribute) for n in ast.walk(node))


def mutation_lines(
    filename: str,
    name: str,
    *,
    attribute: bool = False,
    first: int = 1,
    last: int | None = None,
    passed: bool = False,
) -> list[int]:
    """Lines between ``first`` and ``last`` that add to ``name`` (``self.name`` if ``attribute``).

    Recognised: ``name.append(x)`` (and extend, insert, add, update, setdefault, ...),
    ``name[k] = x``, ``name += ...`` and ``name = f(name, x)`` (``torch.cat([name, x])``).
    With ``passed``, the lines that pass ``name`` to a call instead (``model(x, cache=name)``):
    that is where an object that grows inside a library call (a KV cache) is fed.
    """
    tree = _parse(filename)
    if tree is None:
        return []
    end = last if last is not None else 1 << 30
    found: set[int] = set()
    for node in ast.walk(tree):
        lineno = getattr(node, "lineno", None)
        if lineno is None or not first <= lineno <= end:
            continue
        if isinstance(node, ast.Call) and passed:
            values: list[ast.AST] = [*node.args, *(k.value for k in node.keywords)]
            values += [v for d in values if isinstance(d, ast.Dict) for v in d.values]
            if any(_is_ref(v, name, attribute) for v in values):
                found.add(lineno)
        elif passed:
            continue
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in _MUTATORS
                and _is_ref(func.value, name, attribute)
            ):
                found.add(lineno)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            for target in targets:
                if (
                    isinstance(target, ast.Subscript)
                    and _is_ref(target.value, name, attribute)
                    or _is_ref(target, name, attribute)
                    and (
                        isinstance(node, ast.AugAssign)
                        or (value is not None and _mentions(value, name, attribute))
                    )
                ):
                    found.add(lineno)
    return sorted(found)


def _code_range(code: types.CodeType) -> tuple[int, int]:
    lines = [line for _, _, line in code.co_lines() if line is not None]
    return code.co_firstlineno, max(lines, default=code.co_firstlineno)


# ====================================================================== creation sites


def creation_sites(
    storages: Iterable[Any],
    *,
    first_step: int,
    last_step: int,
    categories: Iterable[Category] | None = None,
    steps: int | None = None,
) -> list[CreationSite]:
    """Group live storages created in ``first_step..last_step`` by (site, category), largest first.

    Args:
        storages: :class:`~profiler.ledger.LiveStorage` records (anything with ``nbytes``,
            ``category``, ``module``, ``step`` and ``site``).
        first_step, last_step: the creation steps to keep (inclusive).
        categories: keep only these categories (all when ``None``).
        steps: divide bytes by this many steps (default: the number of steps in the range).
    """
    wanted = None if categories is None else {Category(c) for c in categories}
    groups: dict[tuple[str | None, Category], list[Any]] = {}
    for storage in storages:
        if not first_step <= storage.step <= last_step:
            continue
        category = Category(storage.category)
        if wanted is not None and category not in wanted:
            continue
        groups.setdefault((storage.site, category), []).append(storage)
    per = max(1, steps if steps is not None else last_step - first_step + 1)
    result = []
    for (site, category), members in groups.items():
        modules = [m.module for m in members if m.module]
        result.append(
            CreationSite(
                site=site,
                source=_source_of(site),
                category=category,
                module=max(set(modules), key=modules.count) if modules else None,
                bytes_per_step=sum(m.nbytes for m in members) // per,
                storages=len(members),
                steps=tuple(sorted({m.step for m in members})),
            )
        )
    # sites known first, then by bytes
    result.sort(key=lambda c: (c.site is None, -c.bytes_per_step))
    return result


# ====================================================================== holders


def _user_file(filename: str, excluded: tuple[str, ...]) -> bool:
    """Whether ``filename`` is the user's code: not a library's, not the standard library's."""
    if filename.startswith(excluded):
        return False
    stdlib = _STDLIB
    if filename.startswith(stdlib):
        # a system Python keeps site-packages inside the standard library's directory
        return filename.startswith(_SITE_PACKAGES)
    return True


def _excluded() -> tuple[str, ...]:
    """Directories of torch, transformers, gpumem and the test runner: never the user's code."""
    here = os.path.dirname(os.path.abspath(__file__))
    prefixes = [os.path.dirname(torch.__file__), here]
    for name in ("transformers", "accelerate", "peft", "tui", "_pytest", "pluggy"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) if module is not None else None
        if path:
            prefixes.append(os.path.dirname(path))
    return tuple(p + os.sep for p in prefixes) + ("<",)


def _site_packages() -> tuple[str, ...]:
    import site

    dirs = [*getattr(site, "getsitepackages", list)(), getattr(site, "USER_SITE", None) or ""]
    return tuple(d + os.sep for d in dirs if d)


_STDLIB = os.path.dirname(os.__file__) + os.sep
_SITE_PACKAGES = _site_packages()


def _hook_codes(model: Any) -> set[types.CodeType]:
    """Code objects of every module hook registered on ``model`` and globally."""
    from torch.nn.modules import module as module_mod

    dicts: list[Mapping[Any, Any]] = []
    for attr in dir(module_mod):
        if attr.startswith("_global_") and attr.endswith("hooks"):
            value = getattr(module_mod, attr)
            if isinstance(value, Mapping):
                dicts.append(value)
    if isinstance(model, torch.nn.Module):
        for sub in model.modules():
            for attr in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
            ):
                value = getattr(sub, attr, None)
                if isinstance(value, Mapping):
                    dicts.append(value)
    codes: set[types.CodeType] = set()
    for mapping in dicts:
        for hook in list(mapping.values()):
            func = getattr(hook, "__func__", hook)
            func = getattr(func, "func", func)  # functools.partial
            code = getattr(func, "__code__", None)
            if isinstance(code, types.CodeType):
                codes.add(code)
    return codes


def _in_codes(site: str | None, codes: Iterable[types.CodeType]) -> bool:
    if site is None:
        return False
    parts = _split_site(site)
    if parts is None:
        return False
    filename, line = parts
    for code in codes:
        if os.path.abspath(code.co_filename) == os.path.abspath(filename):
            first, last = _code_range(code)
            if first <= line <= last:
                return True
    return False


def _storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except Exception:
        return None


@dataclass(slots=True)
class _Found:
    kind: str
    name: str
    owner: str | None
    container: str
    filename: str | None
    first: int
    last: int | None
    attribute: bool
    module_owner: bool
    tensor_ids: set[int]


def find_holders(
    tensors: Sequence[Any],
    *,
    model: Any = None,
    max_depth: int = 3,
    frame: types.FrameType | None = None,
    passed: bool = False,
) -> list[Holder]:
    """What keeps ``tensors`` alive: named user variables, closure cells and object attributes.

    Follows the garbage collector's referrers up through lists, tuples, dicts, sets and deques
    (``max_depth`` levels) to a name: a local variable of a user frame on the current stack, a
    module global, a closure cell, or an attribute of an object. For each, the statement that adds
    to it is looked up in the source (with ``passed``: the statement that passes it to a call).
    Returns the holders, most bytes first.
    """
    tensors = list(tensors)  # the caller's own list may be the holder: search from a copy
    if not tensors:
        return []
    excluded = _excluded()
    frames: list[types.FrameType] = []
    current: types.FrameType | None = frame if frame is not None else sys._getframe(1)
    while current is not None:
        if _user_file(current.f_code.co_filename, excluded):
            frames.append(current)
        current = current.f_back
    frame_locals = [(f, dict(f.f_locals)) for f in frames]

    by_id: dict[int, torch.Tensor] = {id(t): t for t in tensors}
    # member id -> the leaked tensor ids it holds (directly or through containers)
    holds: dict[int, set[int]] = {i: {i} for i in by_id}
    frontier: list[Any] = list(tensors)
    ignore = {id(frontier), id(tensors), id(by_id), id(holds), id(frame_locals)}
    ignore.update(id(d) for _, d in frame_locals)
    found: dict[tuple[str, str, str | None], _Found] = {}
    visited: set[int] = set(by_id)

    def add(found_item: _Found) -> None:
        key = (found_item.kind, found_item.name, found_item.owner)
        existing = found.get(key)
        if existing is None:
            found[key] = found_item
        else:
            existing.tensor_ids |= found_item.tensor_ids

    for _ in range(max_depth + 1):
        if not frontier:
            break
        frontier_ids = {id(x) for x in frontier}
        # 1. locals of user frames on the stack
        for f, local_vars in frame_locals:
            for var, value in local_vars.items():
                if id(value) in frontier_ids:
                    first, last = _code_range(f.f_code)
                    add(
                        _Found(
                            "local",
                            var,
                            f.f_code.co_name,
                            type(value).__name__,
                            f.f_code.co_filename,
                            first,
                            last,
                            False,
                            False,
                            set(holds[id(value)]),
                        )
                    )
        # 2. referrers: containers go up a level, cells/dicts/objects name the holder
        referrers = gc.get_referrers(*frontier)
        ignore.add(id(referrers))
        next_frontier: list[Any] = []
        ignore.add(id(next_frontier))
        for ref in referrers:
            if id(ref) in ignore or isinstance(ref, types.FrameType | torch.Tensor):
                continue
            members = [x for x in gc.get_referents(ref) if id(x) in frontier_ids]
            if not members:
                continue
            held: set[int] = set()
            for member in members:
                held |= holds.get(id(member), set())
            if isinstance(ref, types.CellType):
                for owner in gc.get_referrers(ref):
                    if not isinstance(owner, tuple) or id(owner) in ignore:
                        continue
                    for func in gc.get_referrers(owner):
                        if isinstance(func, types.FunctionType) and func.__closure__ is owner:
                            index = next(i for i, c in enumerate(owner) if c is ref)
                            code = func.__code__
                            first, last = _code_range(code)
                            add(
                                _Found(
                                    "closure",
                                    code.co_freevars[index],
                                    func.__qualname__,
                                    type(members[0]).__name__,
                                    code.co_filename,
                                    first,
                                    last,
                                    False,
                                    False,
                                    set(held),
                                )
                            )
                continue
            if isinstance(ref, dict):
                namespace: dict[Any, Any] = ref
                name = namespace.get("__name__")
                module = sys.modules.get(name) if isinstance(name, str) else None
                if module is not None and getattr(module, "__dict__", None) is namespace:
                    owners: list[Any] = [module]
                else:  # an instance's attributes, or a module loaded outside sys.modules
                    owners = [
                        o
                        for o in gc.get_referrers(namespace)
                        if id(o) not in ignore and getattr(o, "__dict__", None) is namespace
                    ]
                module = next((o for o in owners if isinstance(o, types.ModuleType)), None)
                if module is not None:
                    for var, value in namespace.items():
                        if id(value) in frontier_ids:
                            add(
                                _Found(
                                    "global",
                                    var,
                                    module.__name__,
                                    type(value).__name__,
                                    namespace.get("__file__"),
                                    1,
                                    None,
                                    False,
                                    False,
                                    set(holds[id(value)]),
                                )
                            )
                    continue
                if owners:
                    for owner_obj in owners:
                        _add_attributes(add, owner_obj, namespace, frontier_ids, holds)
                    continue
            if isinstance(ref, _CONTAINERS):
                if id(ref) not in visited:
                    visited.add(id(ref))
                    holds[id(ref)] = held
                    next_frontier.append(ref)
                continue
            attrs = getattr(ref, "__dict__", None)
            if isinstance(attrs, dict):
                _add_attributes(add, ref, attrs, frontier_ids, holds)
        del referrers
        frontier = next_frontier

    hook_codes = _hook_codes(model)
    holders = []
    for item in found.values():
        if item.kind in ("local", "global") and item.container == "Tensor":
            continue  # a variable naming one tensor cannot grow step after step
        if item.filename is not None and not _user_file(item.filename, excluded):
            continue  # torch's or a library's own bookkeeping (prefetch queues, caches' layers)

        site = None
        if item.filename:
            lines = mutation_lines(
                item.filename,
                item.name.rpartition(".")[2],
                attribute=item.attribute,
                first=item.first,
                last=item.last,
                passed=passed,
            )
            if lines:
                site = f"{item.filename}:{lines[0]}"
        held_objects = [by_id[i] for i in item.tensor_ids if i in by_id]
        leaked = [t for t in held_objects if isinstance(t, torch.Tensor)]
        if len(leaked) < len(held_objects):
            from profiler.kvcache import cache_tensors

            for obj in held_objects:
                if not isinstance(obj, torch.Tensor):
                    leaked.extend(cache_tensors(obj))
        keys = {k for k in (_storage_key(t) for t in leaked) if k is not None}
        holders.append(
            Holder(
                kind=item.kind,
                name=item.name,
                owner=item.owner,
                container=item.container,
                site=site,
                source=_source_of(site),
                tensors=len(held_objects),
                nbytes=sum(n for _, n in keys),
                graph=any(t.grad_fn is not None for t in leaked),
                in_hook=_in_codes(site, hook_codes),
                module_owner=item.module_owner,
            )
        )
    # named, located holders first; then the most tensors and bytes
    holders.sort(key=lambda h: (h.site is None, -h.nbytes, -h.tensors))
    return holders


def _class_range(cls: type) -> tuple[str | None, int, int | None]:
    """The file and line range of a class, from its methods' code (works for any loader)."""
    filename: str | None = None
    first, last = 1 << 30, 0
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "torch.nn.modules.module"):
            continue
        for value in vars(klass).values():
            func = getattr(value, "__func__", value)
            code = getattr(func, "__code__", None)
            if not isinstance(code, types.CodeType):
                continue
            if filename is None:
                filename = code.co_filename
            if code.co_filename == filename:
                lo, hi = _code_range(code)
                first, last = min(first, lo), max(last, hi)
        if filename is not None:
            break
    if filename is None:
        return None, 1, None
    return filename, first, last


def _add_attributes(
    add: Any, owner: Any, attrs: dict[str, Any], frontier_ids: set[int], holds: dict[int, set[int]]
) -> None:
    cls = type(owner)
    filename, first, last = _class_range(cls)
    for var, value in attrs.items():
        if id(value) in frontier_ids:
            add(
                _Found(
                    "attribute",
                    f"{cls.__name__}.{var}",
                    cls.__qualname__,
                    type(value).__name__,
                    filename,
                    first,
                    last,
                    True,
                    isinstance(owner, torch.nn.Module),
                    set(holds.get(id(value), set())),
                )
            )


# ====================================================================== patterns


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
    if codes and any(_in_codes(s.site, codes) for s in sites):
        return LeakPattern.HOOK_CLOSURE
    if category == Category.ACTIVATIONS:
        # activations of finished steps alive: an autograd graph outlives its step
        return LeakPattern.GRAPH_KEPT
    if category in (Category.TEMPORARIES, Category.OTHER):
        return LeakPattern.ACCUMULATING_TENSORS
    return LeakPattern.UNKNOWN


def suggestion_for(pattern: LeakPattern, holder: Holder | None = None) -> str:
    """The fix for a pattern, naming the holder when it is known."""
    name = f"`{holder.name}`" if holder is not None else "the container"
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
        graph = " detach them (`output.detach()`)," if holder is not None and holder.graph else ""
        return (
            f"a hook or closure stores tensors in {name} on every call:{graph} clear it after "
            "each use, keep only the latest, or remove the hook (`handle.remove()`) when done."
        )
    if pattern == LeakPattern.MODULE_ATTRIBUTE:
        graph = " with their autograd graph" if holder is not None and holder.graph else ""
        return (
            f"the module attribute {name} stores activations{graph} on every forward: keep "
            "only the latest (`self.x = h.detach()`), clear it each step, or return the values "
            "instead of storing them on the module."
        )
    return (
        "memory created during the steps below stays alive; look at the creation sites in "
        "`leak.evidence.creation_sites`."
    )


# ====================================================================== the detector


class LeakDetector:
    """A tracker observer that confirms growth, hunts for its holder and raises leak alerts.

    Args:
        tracker: the :class:`~profiler.tracker.MemoryTracker` (``None`` for offline use: feed
            :meth:`on_step` by hand; no hunt, no culprit).
        test: the growth thresholds (window, warm-up, noise floor, ...).
        hunt_steps: how many steps a leak hunt records creation sites for.
        max_hunts: at most this many hunts per session (each costs a few exact-mode steps).
        scan_objects: follow surviving tensors back to their holders (garbage-collector walk).
    """

    def __init__(
        self,
        tracker: Any = None,
        *,
        test: GrowthTest | None = None,
        hunt_steps: int = 3,
        max_hunts: int = 4,
        scan_objects: bool = True,
    ) -> None:
        self.tracker = tracker
        self.test = test or GrowthTest()
        self.hunt_steps = max(2, hunt_steps)
        self.max_hunts = max_hunts
        self.scan_objects = scan_objects
        #: confirmed leaks still growing
        self.leaks: list[Leak] = []
        #: leaks that stopped growing (plateaued) after being confirmed
        self.cleared: list[Leak] = []
        self.hunts = 0
        self._series = GrowthSeries(_SERIES, self.test)
        self._durations: deque[float] = deque(maxlen=self.test.window)
        self._hunt_start: int | None = None
        self._hunt_end = -1
        self._hunt_mode: str | None = None
        self._base: dict[int, weakref.ref[Any]] = {}
        self._births: dict[int, tuple[weakref.ref[Any], int]] = {}
        self._cooldown_until = -1
        self._warned: set[str] = set()
        self._last: StepRecord | None = None
        self._kv_holders: list[Holder] = []
        self._hunt_series: GrowthSeries | None = None
        #: leaks found in fast mode are watched on the fast total, not on their category
        self._fast_leaks: set[int] = set()

    # ------------------------------------------------------------------ observer protocol

    def on_step(self, record: StepRecord) -> None:
        """Feed one step end: update the growth test, run or finish a hunt, raise alerts."""
        self._last = record
        self._durations.append(record.duration)
        values = (*record.bytes, record.total)
        if getattr(self.tracker, "kv_cache_reused", True) is False:
            # A cache that only grows within a generation (steps may end per generated token)
            # is no leak: leave it out until a prompt is fed to a cache that was not reset.
            kv = record.bytes[_KV]
            values = (*record.bytes[:_KV], 0, *record.bytes[_KV + 1 :], record.total - kv)
        hunting = self._hunt_start is not None
        if hunting and self._hunt_series is not None:
            # fast mode with the exact ledger on: other figures, kept in their own series
            self._hunt_series.add(record.step, values)
        elif not self._series.add(record.step, values):
            return
        elif self.leaks:
            self._clear_plateaued(record)
        if hunting:
            if record.step == self._hunt_end - 1:
                # one census before the last hunt step is enough: what it finds new and the
                # last step still has alive was born in a hunt step and outlived it
                self._note_births(record.step)
            if record.step >= self._hunt_end:
                self._finish_hunt(record, self._hunt_growing())
            return
        new = self._uncovered(self._series.growing())
        if not new:
            return
        if self.tracker is not None and self.hunts < self.max_hunts:
            if record.step >= self._cooldown_until:
                self._start_hunt(record)
            return
        confirmed = [g for g in new if g.points >= self.test.window]
        if confirmed:
            self._report(record, confirmed, storages=[], holders=[], hunt_steps=())

    def on_close(self, tracker: Any, exc: BaseException | None) -> None:
        """At the end of the block: finish a hunt still running if the growth is confirmed."""
        record = self._last
        if self._hunt_start is not None and record is not None and record.step > self._hunt_start:
            self._finish_hunt(record, self._hunt_growing())
        self._reset_hunt()

    def _hunt_growing(self) -> list[GrowthEstimate]:
        series = self._hunt_series if self._hunt_series is not None else self._series
        return series.growing()

    # ------------------------------------------------------------------ hunt

    def _uncovered(self, growing: list[GrowthEstimate]) -> list[GrowthEstimate]:
        if self._fast_leaks and self._hunt_start is None:
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

    def _start_hunt(self, record: StepRecord) -> None:
        tracker = self.tracker
        self.hunts += 1
        self._hunt_start = record.step
        self._hunt_end = record.step + self.hunt_steps
        fast = getattr(tracker, "mode", None) == "fast"
        self._hunt_mode = (
            f"exact mode on for {self.hunt_steps} steps"
            if fast
            else f"creation sites recorded for {self.hunt_steps} steps"
        )
        self._hunt_series = None
        if fast:
            test = self.test
            self._hunt_series = GrowthSeries(
                _SERIES,
                GrowthTest(
                    window=2 * self.hunt_steps,
                    warmup=0,
                    min_bytes_per_step=test.min_bytes_per_step,
                    min_tau=test.min_tau,
                    recent=min(test.recent, self.hunt_steps),
                    min_points=self.hunt_steps,
                ),
            )
        hunt = getattr(tracker, "hunt", None)
        if callable(hunt):
            # the tracker counts the step that is ending now: one more covers hunt_steps steps
            hunt(self.hunt_steps + 1)
        if self.scan_objects:
            self._base = _tensor_refs()
            self._births = {}

    def _note_births(self, step: int) -> None:
        if not self.scan_objects:
            return
        base = self._base
        births = self._births
        for key, ref in _tensor_refs().items():
            old = base.get(key)
            if old is not None and old() is ref():
                continue
            born = births.get(key)
            if born is not None and born[0]() is ref():
                continue
            births[key] = (ref, step)

    def _reset_hunt(self) -> None:
        if self._hunt_series is not None:
            # fast figures before and after an exact stint differ by a one-off shift: restart
            self._series.reset()
        self._hunt_start = None
        self._hunt_series = None
        self._base = {}
        self._births = {}

    def _finish_hunt(self, record: StepRecord, growing: list[GrowthEstimate]) -> None:
        start = self._hunt_start
        assert start is not None
        try:
            new = self._uncovered(growing)
            # fast mode: growth seen before the hunt, confirmed by the hunt's exact figures
            needed = self.hunt_steps if self._hunt_series is not None else self.test.window
            confirmed = [g for g in new if g.points >= needed]
            if not confirmed:
                if not new:
                    self._cooldown_until = record.step + self.test.window
                    return
                # growing but not yet confirmed: keep hunting one more step at a time
                if record.step < start + 2 * self.hunt_steps:
                    self._hunt_end = record.step + 1
                    hunt = getattr(self.tracker, "hunt", None)
                    if callable(hunt):
                        hunt(2)
                    return
                return
            storages = self._storages()
            holders: list[Holder] = []
            if self.scan_objects:
                survivors = []
                for ref, born in self._births.values():
                    tensor = ref()
                    if tensor is not None and born < record.step:
                        survivors.append(tensor)
                holders = find_holders(
                    survivors,
                    model=getattr(self.tracker, "model", None),
                    frame=sys._getframe(1),
                )
                del survivors
            self._kv_holders = []
            if any(g.series == Category.KV_CACHE for g in confirmed):
                caches = getattr(self.tracker, "kv_caches", None)
                objects = list(caches()) if callable(caches) else []
                self._kv_holders = find_holders(
                    objects, model=None, frame=sys._getframe(1), passed=True
                )
                del objects
            steps = tuple(range(start + 1, record.step + 1))
            self._report(record, confirmed, storages=storages, holders=holders, hunt_steps=steps)
        finally:
            if self._hunt_end <= record.step:
                self._reset_hunt()

    def _storages(self) -> list[Any]:
        ledger = getattr(self.tracker, "ledger", None)
        live = getattr(ledger, "live_storages", None)
        if not callable(live):
            return []
        return list(live())

    # ------------------------------------------------------------------ report

    def _report(
        self,
        record: StepRecord,
        confirmed: list[GrowthEstimate],
        *,
        storages: list[Any],
        holders: list[Holder],
        hunt_steps: tuple[int, ...],
    ) -> None:
        model = getattr(self.tracker, "model", None)
        codes = _hook_codes(model) if self.tracker is not None else set()
        categories = [g for g in confirmed if g.series != TOTAL] or confirmed
        leaks: dict[str, Leak] = {}
        for est in categories:
            leak = self._build(record, est, storages, holders, hunt_steps, codes)
            key = leak.site or f"{leak.category}"
            previous = leaks.get(key)
            if previous is None:
                leaks[key] = leak
            else:
                # one holder, several growing categories: one leak, the larger category
                big, small = (
                    (previous, leak)
                    if previous.bytes_per_step >= leak.bytes_per_step
                    else (leak, previous)
                )
                leaks[key] = _replace(big, bytes_per_step=big.bytes_per_step + small.bytes_per_step)
        for leak in leaks.values():
            self._raise(leak)

    def _build(
        self,
        record: StepRecord,
        est: GrowthEstimate,
        storages: list[Any],
        holders: list[Holder],
        hunt_steps: tuple[int, ...],
        codes: set[types.CodeType],
    ) -> Leak:
        category: Category | None = Category(est.series) if est.series != TOTAL else None
        sites: list[CreationSite] = []
        if hunt_steps:
            cats = None if category is None else [category]
            old_steps = [s for s in hunt_steps if s < record.step]
            if old_steps:
                sites = creation_sites(
                    storages,
                    first_step=old_steps[0],
                    last_step=old_steps[-1],
                    categories=cats,
                    steps=len(old_steps),
                )
            if not any(s.site for s in sites):
                # storages replaced as they grow (a KV cache, torch.cat): the newest ones, each
                # site charged its share of the measured growth
                newest = creation_sites(
                    storages,
                    first_step=hunt_steps[0],
                    last_step=record.step,
                    categories=cats,
                    steps=1,
                )
                held = sum(s.bytes_per_step for s in newest)
                if newest and held > 0:
                    sites = [
                        _replace_site(
                            s, bytes_per_step=est.bytes_per_step * s.bytes_per_step // held
                        )
                        for s in newest
                    ]
        if category is None:
            category = sites[0].category if sites else Category.OTHER
        holder = _pick_holder(category, holders)
        pattern = classify(category, holder, sites, codes)
        if pattern == LeakPattern.KV_CACHE_NOT_RESET:
            # the creation site is the call that feeds the cache; else the line passing it
            holder = self._kv_holders[0] if self._kv_holders else None
            site = next((s.site for s in sites if s.site), None)
            if site is None and holder is not None:
                site = holder.site
        else:
            site = holder.site if holder is not None and holder.site else None
            if site is None:
                site = next((s.site for s in sites if s.site), None)
        capacity = self._capacity()
        capacity_step = capacity_time = None
        rate = est.bytes_per_step
        if capacity is not None and rate > 0:
            left = capacity - max(record.peak, record.total)
            steps_left = max(0, math.ceil(left / rate))
            capacity_step = record.step + steps_left
            mean = sum(self._durations) / len(self._durations) if self._durations else None
            capacity_time = record.time + steps_left * mean if mean is not None else None
        evidence = LeakEvidence(
            growth=est,
            creation_sites=tuple(sites[:8]),
            holder=holder,
            hunt=self._hunt_mode if hunt_steps else None,
            hunt_steps=hunt_steps,
        )
        return Leak(
            category=category,
            bytes_per_step=rate,
            site=site,
            pattern=pattern,
            suggestion=suggestion_for(pattern, holder),
            evidence=evidence,
            source=_source_of(site),
            step=record.step,
            time=record.time,
            capacity=capacity,
            capacity_step=capacity_step,
            capacity_time=capacity_time,
        )

    def _capacity(self) -> int | None:
        tracker = self.tracker
        for name in ("device_total", "capacity"):
            total = getattr(tracker, name, None)
            if isinstance(total, int) and total > 0:
                return total
        return None

    def _raise(self, leak: Leak) -> None:
        self.leaks.append(leak)
        if self._hunt_series is not None:
            self._fast_leaks.add(id(leak))
        message = leak.describe()
        tracker = self.tracker
        emit = getattr(tracker, "emit", None)
        if callable(emit):
            emit(Event(leak.time, leak.step, EventKind.LEAK, message, leak.as_dict()))
        key = leak.site or str(leak.category)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=_user_stacklevel())

    def _clear_plateaued(self, record: StepRecord) -> None:
        still = []
        floor = self.test.min_bytes_per_step
        for leak in self.leaks:
            watched = TOTAL if id(leak) in self._fast_leaks else leak.evidence.growth.series
            est = self._series.estimate(watched)
            if est is not None and not est.growing and est.recent_bytes_per_step < floor:
                self.cleared.append(leak)
                emit = getattr(self.tracker, "emit", None)
                if callable(emit):
                    emit(
                        Event(
                            record.time,
                            record.step,
                            EventKind.LEAK,
                            f"leak cleared: {leak.category} stopped growing "
                            f"(held at {_display_site(leak.site) or 'an unknown line'})",
                            {**leak.as_dict(), "cleared": True},
                        )
                    )
            else:
                still.append(leak)
        self.leaks = still


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the innermost user frame."""
    excluded = _excluded()
    # level 1 is _raise's warnings.warn, level 2 its caller: frame 2 counted from here
    frame: types.FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None:
        if _user_file(frame.f_code.co_filename, excluded):
            return level
        frame = frame.f_back
        level += 1
    return 2


def _pick_holder(category: Category, holders: list[Holder]) -> Holder | None:
    """The holder that best explains growth in ``category``."""
    if not holders:
        return None
    if category in (Category.ACTIVATIONS, Category.TEMPORARIES):
        graph = [h for h in holders if h.graph]
        if graph:
            return graph[0]
    return holders[0]


def _replace(leak: Leak, **changes: Any) -> Leak:
    import dataclasses

    return dataclasses.replace(leak, **changes)


def _replace_site(site: CreationSite, **changes: Any) -> CreationSite:
    import dataclasses

    return dataclasses.replace(site, **changes)


def _tensor_refs() -> dict[int, weakref.ref[Any]]:
    """Weak references to every tensor object the garbage collector tracks, by id."""
    tensor_type = torch.Tensor
    refs: dict[int, weakref.ref[Any]] = {}
    for obj in gc.get_objects():
        # type() and not isinstance(): isinstance reads __class__, which lazy proxies answer
        if issubclass(type(obj), tensor_type):
            try:
                refs[id(obj)] = weakref.ref(obj)
            except TypeError:
                continue
    return refs
