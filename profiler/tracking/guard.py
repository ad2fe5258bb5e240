"""The failure guard: a part of the engine that raises is switched off, with one warning.

The profiler must never break the program it profiles (STYLE.md rule 8): every hook body runs
inside ``try``/``except`` and hands the error here. The guard remembers which parts are off, so a
broken part costs one set lookup from then on, and warns once per part.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from enum import StrEnum

__all__ = ["Guard", "Part"]


class Part(StrEnum):
    """A part of tracking that can fail and be switched off on its own."""

    MODULE_HOOKS = "module hooks"
    EXACT_LEDGER = "exact ledger"
    SAVED_TENSORS = "exact saved-tensor hook"
    GRADIENT_HOOKS = "gradient hooks"
    OPTIMIZER_HOOKS = "optimizer hooks"
    BACKWARD_END = "backward end"
    INPUTS = "input inspection"
    KV_CACHE = "kv cache detection"
    ALLOCATOR = "allocator reading"
    NVML = "nvml"
    OOM_OBSERVER = "cuda oom observer"
    FINAL_SAMPLE = "final sample"
    OBSERVERS = "observers"
    DISTRIBUTED = "distributed memory naming"


class Guard:
    """Which parts are switched off, and the warn-once policy."""

    __slots__ = ("_listeners", "_warned", "disabled")

    def __init__(self) -> None:
        self.disabled: set[Part] = set()
        self._warned: set[str] = set()
        self._listeners: list[Callable[[Part], None]] = []

    def on_switch_off(self, listener: Callable[[Part], None]) -> None:
        """Call ``listener(part)`` when a part is switched off (a strategy stops its hooks)."""
        self._listeners.append(listener)

    def fail(self, part: Part, error: BaseException) -> None:
        """``part`` raised ``error``: switch it off and warn once; never raise."""
        if part in self.disabled:
            return
        self.disabled.add(part)
        warnings.warn(
            f"gpumem: {part} failed and was switched off ({type(error).__name__}: {error}); "
            "the rest of tracking goes on",
            RuntimeWarning,
            stacklevel=3,
        )
        for listener in self._listeners:
            with contextlib.suppress(Exception):  # a listener must not undo the guard
                listener(part)

    def off(self, part: Part, message: str) -> None:
        """Switch ``part`` off for a known reason (no library, no device) and warn once."""
        self.disabled.add(part)
        self.warn_once(str(part), message)

    def warn_once(self, key: str, message: str) -> None:
        """Warn ``message`` the first time ``key`` is seen."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"gpumem: {message}", RuntimeWarning, stacklevel=3)
