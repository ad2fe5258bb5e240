"""Distributed memory the ledger names: FSDP2 shards and gathers, DDP gradient buckets.

What FSDP2 (``fully_shard``) and DDP hold is charged in the existing categories (a gathered
parameter is a weight, a bucket holds gradients) under a sub-label named as
``torch.distributed._tools.FSDPMemTracker`` names it (:data:`profiler.shards.SUBLABELS`):

- the sharded parameters (DTensors, charged by their local, padded shard) at entry;
- the unsharded parameters while gathered: FSDP2 frees and re-allocates them with
  ``UntypedStorage.resize_``, which is not a dispatched op, so while a model with FSDP modules is
  tracked ``resize_`` is wrapped (restored at exit, as ``FSDPMemTracker`` does) and the ledger
  re-reads the storage's size;
- the all-gather output and the reduce-scatter input, from the c10d ops the exact strategy sees
  (``_allgather_base_``, ``_reduce_scatter_base_``), and the whole gradients reduced by it and the
  sharded gradients it produces;
- DDP's gradient buckets, the tensors of an ``allreduce_`` during backward.

Cost: nothing per op unless distributed training is in use (one set lookup then); a ``resize_``
call costs one dict lookup more.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from typing import Any

import torch

from profiler.ledger import GRADIENTS, OTHER, TEMPORARIES, WEIGHTS, Ledger
from profiler.records import Phase
from profiler.shards import (
    ALL_GATHER,
    DDP_BUCKET,
    REDUCE_SCATTER,
    SHARDED_GRAD,
    SHARDED_PARAM,
    UNSHARDED_GRAD,
    UNSHARDED_PARAM,
    local_tensor,
)
from profiler.tracking.guard import Guard, Part
from profiler.tracking.state import EngineState

__all__ = ["ShardWatch", "fsdp_modules"]

Role = tuple[int, str, "weakref.ref[torch.Tensor]"]


def fsdp_modules(model: torch.nn.Module | None) -> list[torch.nn.Module]:
    """The FSDP2 (``fully_shard``) modules in ``model``; empty unless FSDP is imported."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    kind = getattr(fsdp, "FSDPModule", None)
    if model is None or kind is None:
        return []
    return [m for m in model.modules() if isinstance(m, kind)]


def _fsdp_params(module: torch.nn.Module) -> list[Any]:
    state = module._get_fsdp_state()  # type: ignore[operator]
    group = getattr(state, "_fsdp_param_group", None)
    return list(group.fsdp_params) if group is not None else []


def _ddp_in_use(model: torch.nn.Module | None) -> bool:
    ddp = sys.modules.get("torch.nn.parallel.distributed")
    kind = getattr(ddp, "DistributedDataParallel", None)
    if kind is not None and isinstance(model, kind):
        return True
    dist = sys.modules.get("torch.distributed")
    try:
        return bool(dist is not None and dist.is_available() and dist.is_initialized())
    except Exception:  # noqa: BLE001 - a broken distributed build only means "no"
        return False


class ShardWatch:
    """Names FSDP2's and DDP's memory in the ledger while a distributed model is tracked."""

    def __init__(self, state: EngineState, guard: Guard) -> None:
        self.state = state
        self.guard = guard
        self._modules: list[weakref.ref[torch.nn.Module]] = []
        self._roles: dict[int, Role] = {}
        self._unknown: set[int] = set()
        self._original_resize: Any = None
        self._wrapper: Any = None
        #: ids of the c10d ops to look at (empty: the exact strategy skips the check).
        self.comm_ops: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ attach and detach

    def attach(self, model: torch.nn.Module | None) -> None:
        """Find the FSDP modules, label the sharded parameters, wrap ``resize_`` if needed."""
        try:
            modules = fsdp_modules(model)
            self._modules = [weakref.ref(m) for m in modules]
            self._roles.clear()
            self._unknown.clear()
            ops = []
            c10d = torch.ops.c10d if torch.distributed.is_available() else None
            if modules and c10d is not None:
                self._rebuild_roles()
                self._label_sharded()
                self._wrap_resize()
                ops += [c10d._allgather_base_.default, c10d._reduce_scatter_base_.default]
            if c10d is not None and _ddp_in_use(model) and not modules:
                ops.append(c10d.allreduce_.default)
            self._ops = {id(op): op for op in ops}
            self.comm_ops = frozenset(self._ops)
        except Exception as error:
            self.guard.fail(Part.DISTRIBUTED, error)

    def detach(self) -> None:
        """Restore ``resize_`` (unless someone wrapped it again since) and forget the model."""
        if self._wrapper is not None and torch.UntypedStorage.resize_ is self._wrapper:
            torch.UntypedStorage.resize_ = self._original_resize  # type: ignore[method-assign]
        self._wrapper = self._original_resize = None
        self._modules = []
        self._roles.clear()
        self.comm_ops = frozenset()

    # ------------------------------------------------------------------ FSDP roles

    def _rebuild_roles(self) -> None:
        roles = self._roles
        roles.clear()
        for ref in self._modules:
            module = ref()
            if module is None:
                continue
            for fsdp_param in _fsdp_params(module):
                sharded = getattr(fsdp_param, "sharded_param", None)
                if isinstance(sharded, torch.Tensor):
                    self._role(roles, local_tensor(sharded), WEIGHTS, SHARDED_PARAM)
                unsharded = getattr(fsdp_param, "_unsharded_param", None)
                if isinstance(unsharded, torch.Tensor):
                    self._role(roles, unsharded, WEIGHTS, UNSHARDED_PARAM)
                for output in getattr(fsdp_param, "all_gather_outputs", None) or ():
                    if isinstance(output, torch.Tensor):
                        self._role(roles, output, WEIGHTS, UNSHARDED_PARAM)

    @staticmethod
    def _role(roles: dict[int, Role], tensor: torch.Tensor, cat: int, label: str) -> None:
        with contextlib.suppress(RuntimeError, NotImplementedError, TypeError):
            roles[tensor.untyped_storage()._cdata] = (cat, label, weakref.ref(tensor))

    def _label_sharded(self) -> None:
        ledger = self.state.ledger
        for cat, label, ref in list(self._roles.values()):
            tensor = ref()
            if label == SHARDED_PARAM and tensor is not None and self.state.is_wanted(tensor):
                entry = ledger.add_tensor(tensor, cat)
                if entry is not None:
                    ledger.label(entry, cat, label)

    def _wrap_resize(self) -> None:
        original = torch.UntypedStorage.resize_
        watch = self

        def resize_(storage: Any, size: int) -> Any:
            result = original(storage, size)
            if watch.state.active:
                watch.resized(storage)
            return result

        self._original_resize, self._wrapper = original, resize_
        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign, assignment]

    def resized(self, storage: Any) -> None:
        """``storage`` was resized outside dispatch: label it if it is FSDP's, re-read its size."""
        if Part.DISTRIBUTED in self.guard.disabled:
            return
        try:
            key = storage._cdata
            ledger = self.state.ledger
            role = self._roles.get(key)
            if role is None and key not in self._unknown:
                self._rebuild_roles()
                role = self._roles.get(key)
                if role is None:
                    self._unknown.add(key)
            entry = ledger.entries.get(key)
            if role is not None:
                cat, label, ref = role
                tensor = ref()
                if entry is None and tensor is not None and storage.nbytes():
                    entry = ledger.add_tensor(tensor, cat)
                if entry is not None and entry.label != label:
                    ledger.label(entry, cat, label)
            ledger.resize_storage(storage)
        except Exception as error:
            self.guard.fail(Part.DISTRIBUTED, error)

    # ------------------------------------------------------------------ collectives

    def collective(self, func: Any, args: tuple[Any, ...]) -> None:
        """A c10d op the exact strategy saw: name the buffers it works on."""
        try:
            ledger = self.state.ledger
            name = func.__name__
            if name.startswith("_allgather_base_"):
                self._claim(ledger, args[0], WEIGHTS, ALL_GATHER)
            elif name.startswith("_reduce_scatter_base_"):
                self._claim(ledger, args[1], GRADIENTS, REDUCE_SCATTER)
                self._claim(ledger, args[0], GRADIENTS, SHARDED_GRAD)
                self._label_unsharded_grads(ledger)
            elif name.startswith("allreduce_") and self.state.phase is Phase.BACKWARD:
                for tensor in args[0]:
                    self._claim(ledger, tensor, GRADIENTS, DDP_BUCKET)
        except Exception as error:
            self.guard.fail(Part.DISTRIBUTED, error)

    def _claim(self, ledger: Ledger, tensor: Any, cat: int, label: str) -> None:
        if not isinstance(tensor, torch.Tensor) or not self.state.is_wanted(tensor):
            return
        entry = ledger.add_tensor(tensor, cat)
        if entry is not None and entry.cat in (cat, TEMPORARIES, OTHER):
            ledger.label(entry, cat, label)

    def _label_unsharded_grads(self, ledger: Ledger) -> None:
        for ref in self._modules:
            module = ref()
            for fsdp_param in _fsdp_params(module) if module is not None else ():
                unsharded = getattr(fsdp_param, "_unsharded_param", None)
                grad = getattr(unsharded, "grad", None)
                if isinstance(grad, torch.Tensor):
                    self._claim(ledger, grad, GRADIENTS, UNSHARDED_GRAD)
