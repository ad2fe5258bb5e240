"""Fast mode's gradients as one pool: one claim per step, whatever the parameter count.

A full claim looks at every trainable parameter's gradient and charges each storage to the
ledger (exact mode, fast mode's sampled steps, and the first fast step). In between, fast mode
charges the gradients as one pool of the bytes the last full claim found: at the backward's end
one parameter's gradient (the sentinel, the first that had one) is looked at, and when it is a new
tensor the pool is charged and a weak reference to its storage takes the pool out again when it
is freed (``zero_grad()``, ``set_to_none=True``). ``zero_grad(set_to_none=False)`` keeps the
gradients and the pool. The assumption, checked at each full claim: the parameters that get a
gradient are the same from one step to the next (a frozen or unused parameter counts as it did at
the last full claim).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from profiler.ledger import GRADIENTS, Ledger
from profiler.shards import local_tensor

__all__ = ["GradientPool"]


class GradientPool:
    """The gradient bytes of the last full claim, charged while the sentinel gradient lives."""

    __slots__ = (
        "__weakref__",
        "calibrated",
        "charged",
        "first_landing",
        "sentinel",
        "_ledger",
        "_watch",
    )

    def __init__(self) -> None:
        #: Bytes of the gradients the last full claim found (``None``: no full claim yet).
        self.calibrated: int | None = None
        #: Bytes charged to the ledger as the pool now (0: not charged).
        self.charged = 0
        #: The parameter whose gradient stands for all of them.
        self.sentinel: weakref.ref[torch.Tensor] | None = None
        #: The parameter whose gradient was made first at the last full claim (the backward
        #: reaches it first: fast mode's lean steps hook it once to see each backward start).
        self.first_landing: weakref.ref[torch.Tensor] | None = None
        self._ledger: Ledger | None = None
        #: A weak reference to the sentinel gradient's storage (its callback releases the pool).
        self._watch: weakref.ref[Any] | None = None

    def full_claim(
        self, ledger: Ledger, params: list[weakref.ref[torch.Tensor]], wanted: Callable[..., bool]
    ) -> None:
        """Charge every gradient to the ledger, storage by storage; remember their bytes."""
        self.release()
        seen: set[int] = set()
        total = 0
        sentinel = None
        first = last = None
        first_seq = 0
        before = ledger.seq  # storages charged from here on were first seen by this claim
        for ref in params:
            param = ref()
            grad = param.grad if param is not None else None
            if grad is None or not wanted(grad):
                continue
            ledger.claim(grad, GRADIENTS)
            entry = ledger.entry_of(grad)
            if entry is not None and entry.key not in seen:
                seen.add(entry.key)
                total += entry.nbytes
                if entry.seq <= before and (first is None or entry.seq < first_seq):
                    first, first_seq = ref, entry.seq
            if sentinel is None:
                sentinel = ref
            last = ref
        self.calibrated = total
        self.sentinel = sentinel
        # made by the backward under the exact ledger: the earliest; else (first seen here) the
        # last parameter, usually nearest the output
        self.first_landing = first or last
        self._ledger = ledger

    def claim(self, ledger: Ledger) -> bool:
        """Charge the pool if the sentinel holds a new gradient; ``False``: a full claim is due."""
        if self.calibrated is None or self._ledger is not ledger:
            return False
        ref = self.sentinel
        if ref is None:
            return True  # no gradient at the last full claim: none now either
        param = ref()
        grad = param.grad if param is not None else None
        if grad is None:
            return True
        try:
            storage = local_tensor(grad).untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return False
        if storage._cdata in ledger.entries:
            return True  # charged storage by storage already (a full claim's, still alive)
        watch = self._watch
        if watch is not None and watch() is not None:
            return True  # the same gradients as before (zeroed in place, or accumulating)
        if self.charged:
            self.release()
        self._watch = weakref.ref(storage, self._freed)
        self.charged = self.calibrated
        ledger._shift(GRADIENTS, self.charged)
        return True

    def _freed(self, _ref: Any) -> None:
        # Weak-reference callback: the sentinel gradient's storage is gone (zero_grad()).
        if self._watch is _ref:
            self.release()

    def release(self) -> None:
        """Take the pool out of the ledger (the gradients were freed, or a full claim is due)."""
        self._watch = None
        if self.charged and self._ledger is not None:
            self._ledger._shift(GRADIENTS, -self.charged)
        self.charged = 0
