"""The storage ledger: every storage once, in one category and one module, while it lives.

The ledger owns the byte counts. A storage is added when first seen (created by an op, or found
among the model's parameters, buffers, gradients, optimizer state or KV cache), moved between
categories when its role becomes known (a temporary saved for backward becomes an activation, a
fresh tensor assigned to ``.grad`` becomes a gradient), and removed by a weak-reference callback
when the storage is freed. Views and tied weights share one storage, so they count once. The ledger
never holds a tensor or a storage alive.

Hot path: :meth:`Ledger.add` and :meth:`Ledger.reclassify` touch a handful of ints and lists; no
logging, no formatting, no pandas. Sizes are charged as the device allocator charges them
(``rounding=512`` for CUDA's caching allocator).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch

from profiler.errors import SimulatedOutOfMemoryError
from profiler.frames import user_sites
from profiler.records import CATEGORIES, Category, LiveStorage
from profiler.shards import local_tensor

__all__ = ["BIG_STORAGE_BYTES", "Ledger", "LiveStorage", "StorageEntry"]

#: Storages at least this large always carry their shape, dtype and creation site.
BIG_STORAGE_BYTES = 1 << 20

N_CATEGORIES = len(CATEGORIES)
_INDEX = {category: i for i, category in enumerate(CATEGORIES)}
WEIGHTS, BUFFERS, GRADIENTS, OPTIMIZER, ACTIVATIONS, KV_CACHE, TEMPORARIES, OTHER = (
    _INDEX[c] for c in CATEGORIES
)


def category_index(category: Category) -> int:
    """The position of ``category`` in :data:`profiler.records.CATEGORIES`."""
    return _INDEX[Category(category)]


class StorageEntry(weakref.ref):
    """One live storage: a weak reference to it plus what the ledger knows about it."""

    __slots__ = (
        "cat",
        "dtype",
        "key",
        "label",
        "module",
        "nbytes",
        "saves",
        "seq",
        "shape",
        "since",
        "site",
        "step",
    )

    key: int
    nbytes: int
    cat: int
    label: str | None  # a sub-label within ``cat`` (profiler.shards.SUBLABELS), or None
    module: str | None
    seq: int
    since: int  # the allocation number from which it has been in ``cat``
    step: int
    saves: int
    site: tuple[tuple[str, int], ...] | None
    shape: tuple[int, ...] | None
    dtype: str | None


class Ledger:
    """Byte counts per category, current and peak, over every storage it has seen.

    Args:
        rounding: charge each storage rounded up to this many bytes (512 on CUDA).
        capacity: a simulated device capacity; an allocation that would take the total past it
            raises :class:`~profiler.errors.SimulatedOutOfMemoryError` before it is charged.
        on_overflow: called with (requested, total) just before that error is raised.
    """

    def __init__(
        self,
        *,
        rounding: int = 1,
        capacity: int | None = None,
        on_overflow: Callable[[int, int], None] | None = None,
    ) -> None:
        self.entries: dict[int, StorageEntry] = {}
        self.current = [0] * N_CATEGORIES
        self.total = 0
        self.peak = 0
        self.at_peak = [0] * N_CATEGORIES
        self.category_peak = [0] * N_CATEGORIES
        self.category_peak_seq = [0] * N_CATEGORIES
        self.peak_seq = 0
        #: The peak since the last :meth:`reset_window` (a step's peak), and its split.
        self.window_peak = 0
        self.window_at_peak = [0] * N_CATEGORIES
        self.window_seq = 0
        self.seq = 0
        self.rounding = max(1, int(rounding))
        self.capacity = capacity
        self.on_overflow = on_overflow
        self.step = 0
        self.module: str | None = None
        self.record_sites = False
        #: Running maxima of the total, one per open module frame (innermost last).
        self.frames: list[int] = []
        #: Bytes per sub-label (FSDP shards, gathered parameters, communication buffers), now
        #: and at their highest; only storages given a label count here.
        self.label_current: dict[str, int] = {}
        self.label_peak: dict[str, int] = {}
        self._free_cb = self._free

    # ------------------------------------------------------------------ adding and removing

    def size_of(self, storage: Any) -> int:
        """The bytes ``storage`` is charged at, after rounding."""
        nbytes = storage.nbytes()
        r = self.rounding
        if r > 1 and nbytes:
            nbytes = -(-nbytes // r) * r
        return int(nbytes)

    def add_tensor(self, tensor: torch.Tensor, cat: int) -> StorageEntry | None:
        """Charge ``tensor``'s storage to category index ``cat`` unless already known.

        Returns the storage's entry (new or existing), or ``None`` for a tensor without storage.
        """
        try:
            storage = local_tensor(tensor).untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return None  # sparse, nested or a subclass without a plain storage
        entry = self.entries.get(storage._cdata)
        if entry is not None:
            return entry
        return self._add(storage, tensor, cat)

    def _add(self, storage: Any, tensor: torch.Tensor, cat: int) -> StorageEntry:
        nbytes = self.size_of(storage)
        total = self.total + nbytes
        if self.capacity is not None and total > self.capacity:
            self._overflow(nbytes)
        key = storage._cdata
        entry = StorageEntry(storage, self._free_cb)
        entry.key = key
        entry.nbytes = nbytes
        entry.cat = cat
        entry.saves = 0
        entry.label = None
        entry.module = self.module
        self.seq += 1
        entry.seq = entry.since = self.seq
        entry.step = self.step
        if nbytes >= BIG_STORAGE_BYTES or self.record_sites:
            entry.site = self._site()
            entry.shape = tuple(tensor.shape)
            entry.dtype = str(tensor.dtype).removeprefix("torch.")
        else:
            entry.site = None
            entry.shape = None
            entry.dtype = None
        self.entries[key] = entry
        current = self.current
        current[cat] += nbytes
        if current[cat] > self.category_peak[cat]:
            self.category_peak[cat] = current[cat]
            self.category_peak_seq[cat] = self.seq
        self.total = total
        self._check_peaks(total, current)
        frames = self.frames
        if frames and total > frames[-1]:
            frames[-1] = total
        return entry

    def _overflow(self, nbytes: int) -> None:
        capacity = self.capacity
        assert capacity is not None
        if self.on_overflow is not None:
            self.on_overflow(nbytes, self.total)
        from profiler.units import format_bytes

        free = max(capacity - self.total, 0)
        raise SimulatedOutOfMemoryError(
            f"Simulated device out of memory. Tried to allocate {format_bytes(nbytes)}; "
            f"{format_bytes(self.total)} of {format_bytes(capacity)} in use, "
            f"{format_bytes(free)} free (gpumem capacity limit)",
            requested=nbytes,
            capacity=capacity,
            total=self.total,
        )

    def _free(self, entry: StorageEntry) -> None:
        # Weak-reference callback: the storage is gone. Runs inside its deallocation.
        if self.entries.get(entry.key) is not entry:
            return
        del self.entries[entry.key]
        nbytes = entry.nbytes
        self.current[entry.cat] -= nbytes
        self.total -= nbytes
        if entry.label is not None:
            self.label_current[entry.label] -= nbytes

    def resize(self, tensor: torch.Tensor) -> None:
        """Re-read the size of a known storage after an op that may have resized it."""
        try:
            storage = local_tensor(tensor).untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return
        self.resize_storage(storage)

    def resize_storage(self, storage: Any) -> None:
        """Re-read the size of ``storage`` if known (``UntypedStorage.resize_`` is not an op:
        FSDP2 frees and re-allocates gathered parameters that way)."""
        entry = self.entries.get(storage._cdata)
        if entry is None:
            return
        nbytes = self.size_of(storage)
        delta = nbytes - entry.nbytes
        if delta:
            if delta > 0 and self.capacity is not None and self.total + delta > self.capacity:
                self._overflow(delta)
            entry.nbytes = nbytes
            self._shift(entry.cat, delta)
            if entry.label is not None:
                self._label_shift(entry.label, delta)

    def _label_shift(self, label: str, delta: int) -> None:
        value = self.label_current.get(label, 0) + delta
        self.label_current[label] = value
        if value > self.label_peak.get(label, 0):
            self.label_peak[label] = value

    def label(self, entry: StorageEntry, cat: int, label: str | None) -> None:
        """Put a known storage in category index ``cat`` under sub-label ``label``."""
        if entry.label != label:
            if entry.label is not None:
                self._label_shift(entry.label, -entry.nbytes)
            entry.label = label
            if label is not None:
                self._label_shift(label, entry.nbytes)
        self.reclassify(entry, cat)

    def entry_of(self, tensor: torch.Tensor) -> StorageEntry | None:
        """The entry of ``tensor``'s storage (its local shard's for a DTensor), or ``None``."""
        try:
            return self.entries.get(local_tensor(tensor).untyped_storage()._cdata)
        except (RuntimeError, NotImplementedError, TypeError):
            return None

    def _shift(self, cat: int, delta: int) -> None:
        current = self.current
        current[cat] += delta
        if current[cat] > self.category_peak[cat]:
            self.category_peak[cat] = current[cat]
            self.category_peak_seq[cat] = self.seq
        self.total += delta
        self._check_peaks(self.total, current)
        if self.frames and self.total > self.frames[-1]:
            self.frames[-1] = self.total

    # ------------------------------------------------------------------ roles

    def reclassify(self, entry: StorageEntry, cat: int, *, follow_peak: bool = True) -> None:
        """Move a storage to category index ``cat``.

        A storage alive now that was in its old category at a peak was part of that peak, so by
        default the peaks follow it: the at-peak split (and the old category's own peak) report
        its bytes in the role they turned out to have, a KV cache or optimizer state rather than
        the temporary they were for a moment. ``follow_peak=False`` is for a role that ends (a
        saved tensor released after backward): the peaks keep the role the bytes had then.
        """
        old = entry.cat
        if old == cat:
            return
        nbytes = entry.nbytes
        current = self.current
        current[old] -= nbytes
        current[cat] += nbytes
        if follow_peak:
            since = entry.since
            if since <= self.window_seq:
                self.window_at_peak[old] -= nbytes
                self.window_at_peak[cat] += nbytes
            if since <= self.peak_seq and self.at_peak is not self.window_at_peak:
                self.at_peak[old] -= nbytes
                self.at_peak[cat] += nbytes
            if since <= self.category_peak_seq[old]:
                self.category_peak[old] = max(self.category_peak[old] - nbytes, current[old])
        if current[cat] > self.category_peak[cat]:
            self.category_peak[cat] = current[cat]
            self.category_peak_seq[cat] = self.seq
        entry.cat = cat
        entry.since = self.seq + 1

    def claim(self, tensor: torch.Tensor, cat: int, *, only_from: tuple[int, ...] = ()) -> int:
        """Put ``tensor``'s storage in ``cat`` (adding it if unknown); returns bytes moved or added.

        With ``only_from``, a known storage moves only if its category is one of those.
        """
        try:
            storage = local_tensor(tensor).untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):
            return 0
        entry = self.entries.get(storage._cdata)
        if entry is None:
            return self._add(storage, tensor, cat).nbytes
        if entry.cat == cat or (only_from and entry.cat not in only_from):
            return 0
        self.reclassify(entry, cat)
        return entry.nbytes

    def category_of(self, tensor: torch.Tensor) -> int | None:
        """The category index of ``tensor``'s storage, or ``None`` if the ledger does not know it."""
        entry = self.entry_of(tensor)
        return None if entry is None else entry.cat

    def _check_peaks(self, total: int, split: list[int]) -> None:
        """A new high of the step (window) and maybe of the run: keep the split at that moment."""
        if total > self.window_peak:
            self.window_peak = total
            self.window_at_peak = split[:]
            self.window_seq = self.seq
            if total > self.peak:
                self.peak = total
                self.at_peak = self.window_at_peak
                self.peak_seq = self.seq

    def reset_window(self) -> tuple[int, tuple[int, ...]]:
        """Close the current window (a step): returns its peak and split, and opens the next."""
        result = (self.window_peak, tuple(self.window_at_peak))
        if self.at_peak is self.window_at_peak:
            self.at_peak = self.window_at_peak[:]
        self.window_peak = self.total
        self.window_at_peak = self.current[:]
        self.window_seq = self.seq
        return result

    # ------------------------------------------------------------------ module frames

    def push_frame(self) -> None:
        """Open a module frame: from now on its running maximum of the total is kept."""
        self.frames.append(self.total)

    def pop_frame(self) -> int:
        """Close the innermost module frame; returns the highest total seen while it was open."""
        highest = self.frames.pop()
        if self.frames and highest > self.frames[-1]:
            self.frames[-1] = highest
        return highest

    def observe_total(self, total: int, categories: list[int]) -> None:
        """Fast mode: record a total read from an allocator counter, split as ``categories``."""
        self._check_peaks(total, categories)
        for i, value in enumerate(categories):
            if value > self.category_peak[i]:
                self.category_peak[i] = value
                self.category_peak_seq[i] = self.seq
        if self.frames and total > self.frames[-1]:
            self.frames[-1] = total

    # ------------------------------------------------------------------ creation sites

    def _site(self) -> tuple[tuple[str, int], ...] | None:
        """Up to four user frames (file, line), innermost first, skipping library code."""
        return user_sites(sys._getframe(1), 4)

    # ------------------------------------------------------------------ queries

    def live_storages(self) -> list[LiveStorage]:
        """Every storage alive now, largest first."""
        result = []
        for entry in list(self.entries.values()):
            site = entry.site
            result.append(
                LiveStorage(
                    nbytes=entry.nbytes,
                    category=CATEGORIES[entry.cat],
                    module=entry.module,
                    step=entry.step,
                    site=f"{site[0][0]}:{site[0][1]}" if site else None,
                    stack=tuple(f"{f}:{line}" for f, line in site) if site else None,
                    shape=entry.shape,
                    dtype=entry.dtype,
                )
            )
        result.sort(key=lambda s: s.nbytes, reverse=True)
        return result

    def snapshot(self) -> tuple[int, ...]:
        """The current bytes per category, in :data:`CATEGORIES` order."""
        return tuple(self.current)
