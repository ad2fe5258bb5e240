"""Every hook handle the engine installs, in named groups, all removed at exit.

torch's ModTracker/MemTracker pattern: register in ``__enter__``, remove every handle in
``__exit__``. Groups let a part swap its own hooks (a leak hunt swaps the strategy's module hooks)
and drop per-step tensor hooks at each step end without touching the rest.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["HookSet"]


class _Handle(Protocol):
    def remove(self) -> None: ...


class HookSet:
    """Hook handles by group; :meth:`remove_all` leaves nothing behind."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[str, list[_Handle]] = {}

    def add(self, group: str, handle: Any) -> None:
        """Keep ``handle`` (anything with ``remove()``) in ``group``."""
        self._groups.setdefault(group, []).append(handle)

    def group(self, group: str) -> list[Any]:
        """The list behind ``group`` (the hot path appends to it directly)."""
        return self._groups.setdefault(group, [])

    def remove(self, group: str) -> None:
        """Remove every handle of ``group``."""
        handles = self._groups.get(group)
        while handles:
            handles.pop().remove()

    def remove_all(self) -> None:
        """Remove every handle of every group."""
        for name in list(self._groups):
            self.remove(name)

    def __len__(self) -> int:
        return sum(len(handles) for handles in self._groups.values())
