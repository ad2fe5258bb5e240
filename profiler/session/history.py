"""A session's written samples: kept as raw lines, parsed only when the history is asked for.

``gpumem top`` shows hundreds of sessions but draws the history chart of one at a time, and a
session writes ten samples a second; parsing every line of every stream at each poll is what
made a refresh of 256 sessions cost ~200 ms. So the reader parses only the latest sample of a
poll (:func:`latest_sample`) and takes the peak from the totals in the appended bytes
(:func:`highest_total`, a regex, no JSON); the lines themselves go to a bounded
:class:`SampleLog`, which turns them into :class:`~profiler.session.fields.HistoryPoint` records
when a :class:`History` (what :attr:`SessionView.history` holds) is first read, once per line.

A :class:`History` is a read-only sequence frozen at its poll: it shows the samples written up
to that poll, even when read after later polls. Lines that are not samples (corrupt, of another
schema version, absurd numbers) are counted in :attr:`History.skipped` once parsed. Thread-safe
(the reader polls on a worker thread; the screen reads histories on the UI thread).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, overload

from profiler.session.fields import HistoryPoint, bytes_tuple, float_or_none, int_or_none
from profiler.session.files import parse_line
from profiler.session.schema import SCHEMA_VERSION

__all__ = ["History", "SampleLog", "highest_total", "latest_sample", "sample_point"]

_TOTAL = re.compile(rb'"total":\s*(\d{1,19})(?![\d.eE])')
_LIMIT = 2**62


def sample_point(record: dict[str, Any]) -> HistoryPoint | None:
    """A sample line's record as a point; ``None`` if it is not a sample of this schema."""
    if record.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
        return None
    t = float_or_none(record.get("t"))
    total = int_or_none(record.get("total"))
    if t is None or total is None:
        return None
    step = int_or_none(record.get("step")) or 0
    return HistoryPoint(
        t, step, total, bytes_tuple(record.get("bytes")), record.get("peak") is True
    )


def latest_sample(lines: Sequence[bytes]) -> tuple[dict[str, Any], HistoryPoint] | None:
    """The newest line of ``lines`` that is a sample and not a window's peak, parsed."""
    for line in reversed(lines):
        if b'"peak":true' in line:
            continue  # a window's peak, written beside the latest sample
        record = parse_line(line)
        point = None if record is None else sample_point(record)
        if record is not None and point is not None and not point.peak:
            return record, point
    return None


def highest_total(lines: Sequence[bytes]) -> int | None:
    """The highest ``"total"`` in ``lines`` (integers up to 2**62; found without parsing)."""
    best = None
    for found in _TOTAL.findall(b"\n".join(lines)):
        value = int(found)
        if value <= _LIMIT and (best is None or value > best):
            best = value
    return best


class SampleLog:
    """The newest ``maxlen`` sample lines of one session, parsed on demand (once each)."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._lock = threading.Lock()
        self._raw: deque[bytes] = deque(maxlen=maxlen)  # the newest lines not parsed yet
        self._points: deque[tuple[int, HistoryPoint]] = deque(maxlen=maxlen)
        self._count = 0  # lines added so far: the next line's sequence number
        self._bad = 0
        self._shown: History | None = None

    def add(self, lines: Sequence[bytes]) -> None:
        """Keep ``lines`` (complete lines, oldest first)."""
        if lines:
            with self._lock:
                self._raw.extend(lines)
                self._count += len(lines)

    def history(self) -> History:
        """The history up to now (the same object while nothing was added)."""
        shown = self._shown
        if shown is None or shown.upto != self._count:
            shown = self._shown = History(self, self._count)
        return shown

    def points(self, upto: int) -> tuple[tuple[HistoryPoint, ...], int]:
        """The kept points of the lines before sequence number ``upto``, and the bad lines."""
        with self._lock:
            raw = self._raw
            if raw:
                seq = self._count - len(raw)
                for line in raw:
                    record = parse_line(line)
                    point = None if record is None else sample_point(record)
                    if point is None:
                        self._bad += 1
                    else:
                        self._points.append((seq, point))
                    seq += 1
                raw.clear()
            kept = tuple(point for seq, point in self._points if seq < upto)
            return kept, self._bad


class History(Sequence[HistoryPoint]):
    """The samples of a session up to one poll, oldest first, parsed when first read."""

    __slots__ = ("_log", "_points", "_skipped", "upto")

    def __init__(self, log: SampleLog, upto: int) -> None:
        self._log = log
        self.upto = upto
        self._points: tuple[HistoryPoint, ...] | None = None
        self._skipped = 0

    def _get(self) -> tuple[HistoryPoint, ...]:
        points = self._points
        if points is None:
            points, self._skipped = self._log.points(self.upto)
            self._points = points
        return points

    @property
    def skipped(self) -> int:
        """Lines of the log that were not samples (counted once they were parsed)."""
        self._get()
        return self._skipped

    def __len__(self) -> int:
        return len(self._get())

    @overload
    def __getitem__(self, index: int) -> HistoryPoint: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[HistoryPoint]: ...

    def __getitem__(self, index: int | slice) -> HistoryPoint | Sequence[HistoryPoint]:
        return self._get()[index]

    def __iter__(self) -> Iterator[HistoryPoint]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, History | tuple | list):
            return self._get() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"History({list(self._get())!r})"
