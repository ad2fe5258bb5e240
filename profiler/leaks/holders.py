"""Holder search: what keeps leaked tensors alive, named the way the user's code names it.

From the tensors that outlived a leak hunt, :func:`find_holders` follows the garbage collector's
referrers up through lists, tuples, dicts, sets and deques to a name: a local variable of a user
frame on the stack, a module global, a closure cell (a hook's), or an attribute of an object (a
module's ``self.seen``). For each it finds the statement that adds to it
(:func:`~profiler.leaks.source.mutation_lines`). :func:`tensor_refs` is the census the hunt takes
to tell which tensors were born during it.

Cost: one ``gc.get_referrers`` per level (``max_depth`` + 1 levels) over every object the
collector tracks; a fraction of a second with ~300k objects, paid only at a hunt's end.
"""

from __future__ import annotations

import gc
import sys
import types
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.modules import module as torch_module

from profiler.frames import is_user_file, user_frames
from profiler.kvcache import cache_tensors
from profiler.leaks.records import Holder
from profiler.leaks.source import code_range, in_codes, mutation_lines, source_of

__all__ = ["find_holders", "hook_codes", "tensor_refs"]

#: Containers the search climbs through to the name that holds them.
_CONTAINERS = (list, tuple, set, frozenset, deque, dict)
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def tensor_refs() -> dict[int, weakref.ref[Any]]:
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


def hook_codes(model: Any) -> set[types.CodeType]:
    """Code objects of every module hook registered on ``model`` and globally."""
    dicts: list[Mapping[Any, Any]] = []
    for attr in dir(torch_module):
        if attr.startswith("_global_") and attr.endswith("hooks"):
            value = getattr(torch_module, attr)
            if isinstance(value, Mapping):
                dicts.append(value)
    if isinstance(model, torch.nn.Module):
        for sub in model.modules():
            for attr in _HOOK_DICTS:
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


def _storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except Exception:
        return None


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
                lo, hi = code_range(code)
                first, last = min(first, lo), max(last, hi)
        if filename is not None:
            break
    if filename is None:
        return None, 1, None
    return filename, first, last


@dataclass(slots=True)
class _Found:
    """A named holder found by the search, before its adding line is looked up."""

    kind: str
    name: str
    owner: str | None
    container: str
    filename: str | None
    first: int
    last: int | None
    tensor_ids: set[int]
    attribute: bool = False
    module_owner: bool = False

    @classmethod
    def in_code(
        cls, kind: str, name: str, owner: str, container: str, code: types.CodeType, held: set[int]
    ) -> _Found:
        """A holder named inside a function (a local or a closure's free variable)."""
        first, last = code_range(code)
        return cls(kind, name, owner, container, code.co_filename, first, last, held)


class _HolderSearch:
    """One search from leaked objects up to the names that hold them.

    Every container the search itself makes that refers to a searched object is in ``ignore``,
    so the collector's referrers never name the search as a holder. The slotted instance holds
    those containers, never a searched object directly.
    """

    __slots__ = ("by_id", "found", "frame_locals", "holds", "ignore", "tensors", "visited")

    def __init__(self, tensors: list[Any], frame: types.FrameType | None) -> None:
        self.tensors = tensors
        self.frame_locals = [(f, dict(f.f_locals)) for f in user_frames(frame)]
        self.by_id: dict[int, Any] = {id(t): t for t in tensors}
        # member id -> the leaked object ids it holds (directly or through containers)
        self.holds: dict[int, set[int]] = {i: {i} for i in self.by_id}
        self.found: dict[tuple[str, str, str | None], _Found] = {}
        self.visited: set[int] = set(self.by_id)
        self.ignore = {id(tensors), id(self.by_id), id(self.holds), id(self.frame_locals)}
        self.ignore.update(id(d) for _, d in self.frame_locals)

    def run(self, max_depth: int) -> None:
        """Climb ``max_depth`` levels of containers above the leaked objects."""
        frontier: list[Any] = list(self.tensors)
        self.ignore.add(id(frontier))
        for _ in range(max_depth + 1):
            if not frontier:
                break
            ids = {id(x) for x in frontier}
            self._locals(ids)
            frontier = self._level(frontier, ids)

    def _add(self, item: _Found) -> None:
        key = (item.kind, item.name, item.owner)
        existing = self.found.get(key)
        if existing is None:
            self.found[key] = item
        else:
            existing.tensor_ids |= item.tensor_ids

    def _locals(self, ids: set[int]) -> None:
        """Locals of user frames on the stack that are searched objects."""
        for f, local_vars in self.frame_locals:
            for var, value in local_vars.items():
                if id(value) in ids:
                    held = set(self.holds[id(value)])
                    code, container = f.f_code, type(value).__name__
                    self._add(_Found.in_code("local", var, code.co_name, container, code, held))

    def _level(self, frontier: list[Any], ids: set[int]) -> list[Any]:
        """Name the holders that refer to ``frontier``; return the containers one level up."""
        referrers = gc.get_referrers(*frontier)
        self.ignore.add(id(referrers))
        next_frontier: list[Any] = []
        self.ignore.add(id(next_frontier))
        for ref in referrers:
            self._referrer(ref, ids, next_frontier)
        del referrers
        return next_frontier

    def _referrer(self, ref: Any, ids: set[int], next_frontier: list[Any]) -> None:
        """Containers go up a level; cells, namespaces and objects name the holder."""
        if id(ref) in self.ignore or isinstance(ref, types.FrameType | torch.Tensor):
            return
        members = [x for x in gc.get_referents(ref) if id(x) in ids]
        if not members:
            return
        held: set[int] = set()
        for member in members:
            held |= self.holds.get(id(member), set())
        if isinstance(ref, types.CellType):
            self._closure(ref, type(members[0]).__name__, held)
            return
        if isinstance(ref, dict) and self._namespace(ref, ids):
            return
        if isinstance(ref, _CONTAINERS):
            if id(ref) not in self.visited:
                self.visited.add(id(ref))
                self.holds[id(ref)] = held
                next_frontier.append(ref)
            return
        attrs = getattr(ref, "__dict__", None)
        if isinstance(attrs, dict):
            self._attributes(ref, attrs, ids)

    def _closure(self, cell: types.CellType, container: str, held: set[int]) -> None:
        """The functions whose closure holds ``cell``: the free variable names the holder."""
        for owner in gc.get_referrers(cell):
            if not isinstance(owner, tuple) or id(owner) in self.ignore:
                continue
            for func in gc.get_referrers(owner):
                if isinstance(func, types.FunctionType) and func.__closure__ is owner:
                    index = next(i for i, c in enumerate(owner) if c is cell)
                    code = func.__code__
                    name, qualname = code.co_freevars[index], func.__qualname__
                    self._add(_Found.in_code("closure", name, qualname, container, code, set(held)))

    def _namespace(self, namespace: dict[Any, Any], ids: set[int]) -> bool:
        """A module's globals or an object's attributes: name them (False: a plain dict)."""
        name = namespace.get("__name__")
        module = sys.modules.get(name) if isinstance(name, str) else None
        if module is not None and getattr(module, "__dict__", None) is namespace:
            owners: list[Any] = [module]
        else:  # an instance's attributes, or a module loaded outside sys.modules
            owners = [
                o
                for o in gc.get_referrers(namespace)
                if id(o) not in self.ignore and getattr(o, "__dict__", None) is namespace
            ]
        module = next((o for o in owners if isinstance(o, types.ModuleType)), None)
        if module is None:
            for owner in owners:
                self._attributes(owner, namespace, ids)
            return bool(owners)
        filename = namespace.get("__file__")
        for var, value in namespace.items():
            if id(value) in ids:
                kept = set(self.holds[id(value)])
                container = type(value).__name__
                self._add(
                    _Found(
                        kind="global",
                        name=var,
                        owner=module.__name__,
                        container=container,
                        filename=filename,
                        first=1,
                        last=None,
                        tensor_ids=kept,
                    )
                )
        return True

    def _attributes(self, owner: Any, attrs: dict[str, Any], ids: set[int]) -> None:
        """The attributes of ``owner`` that are searched objects."""
        cls = type(owner)
        filename, first, last = _class_range(cls)
        module_owner = isinstance(owner, torch.nn.Module)
        for var, value in attrs.items():
            if id(value) in ids:
                kept = set(self.holds.get(id(value), set()))
                self._add(
                    _Found(
                        kind="attribute",
                        name=f"{cls.__name__}.{var}",
                        owner=cls.__qualname__,
                        container=type(value).__name__,
                        filename=filename,
                        first=first,
                        last=last,
                        attribute=True,
                        module_owner=module_owner,
                        tensor_ids=kept,
                    )
                )

    def holders(self, *, model: Any, passed: bool) -> list[Holder]:
        """The holders found, named, located holders first; then the most bytes and tensors."""
        codes = hook_codes(model)
        found = [self._holder(item, passed, codes) for item in self.found.values()]
        holders = [h for h in found if h is not None]
        holders.sort(key=lambda h: (h.site is None, -h.nbytes, -h.tensors))
        return holders

    def _holder(self, item: _Found, passed: bool, codes: set[types.CodeType]) -> Holder | None:
        if item.kind in ("local", "global") and item.container == "Tensor":
            return None  # a variable naming one tensor cannot grow step after step
        if item.filename is not None and not is_user_file(item.filename):
            return None  # torch's or a library's own bookkeeping (prefetch queues, caches)
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
        held = [self.by_id[i] for i in item.tensor_ids if i in self.by_id]
        leaked = [t for t in held if isinstance(t, torch.Tensor)]
        for obj in held:
            if not isinstance(obj, torch.Tensor):  # a KV cache object: its tensors
                leaked.extend(cache_tensors(obj))
        keys = {k for k in (_storage_key(t) for t in leaked) if k is not None}
        return Holder(
            kind=item.kind,
            name=item.name,
            owner=item.owner,
            container=item.container,
            site=site,
            source=source_of(site),
            tensors=len(held),
            nbytes=sum(n for _, n in keys),
            graph=any(t.grad_fn is not None for t in leaked),
            in_hook=in_codes(site, codes),
            module_owner=item.module_owner,
        )


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
    (``max_depth`` levels) to a name: a local variable of a user frame on the stack from
    ``frame`` (default: the caller's) outwards, a module global, a closure cell, or an attribute
    of an object. For each, the statement that adds to it is looked up in the source (with
    ``passed``: the statement that passes it to a call). ``tensors`` may also hold KV-cache
    objects (their tensors are counted). Returns the holders, most bytes first.
    """
    tensors = list(tensors)  # the caller's own list may be the holder: search from a copy
    if not tensors:
        return []
    search = _HolderSearch(tensors, frame if frame is not None else sys._getframe(1))
    search.run(max_depth)
    return search.holders(model=model, passed=passed)
