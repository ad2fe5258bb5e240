"""The latest state of every session, read from the ends of their streams (the exporter's reader).

A Prometheus scrape needs each session's latest figures, not its history: where
:class:`~profiler.session.reader.SessionReader` parses every line appended since the last poll
(what ``gpumem top`` draws), :class:`StreamTail` parses one line of what was appended to
``samples.jsonl`` (the totals for the peak come from a regex over the bytes) and only the step
ends, leak alerts and predictions among the lines appended to ``events.jsonl`` (found by a
substring test before any JSON is parsed). The figures follow the reader's rules: the latest
sample, or the last step end when that is newer; the peak is the highest total or session peak
seen; a session is live while its process runs (this host) or writes (another host), and ended
once ``summary.json`` exists.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.records import CATEGORIES
from profiler.session import files
from profiler.session.fields import Predicted, predicted_pairs
from profiler.session.layout import EVENTS, META, SAMPLES, SUMMARY, host_matches, sessions_dir
from profiler.session.reader import SessionMeta

__all__ = ["SessionState", "StreamTail"]

_NAMES = tuple(str(c) for c in CATEGORIES)
_TAIL_BYTES = 16 * 1024
_TOTAL = re.compile(rb'"total":\s*(\d+)')


@dataclass(slots=True)
class SessionState:
    """What the exporter knows about one session now."""

    meta: SessionMeta
    live: bool = True
    step: int | None = None
    current: int | None = None
    bytes: tuple[int, ...] | None = None
    peak: int | None = None
    leaks: int = 0
    time: float = 0.0  # of the figures in ``current``/``bytes``
    #: the newest ``prediction`` event's figures (``None``: none yet; the meta's then apply)
    prediction: Predicted | None = None

    @property
    def predicted(self) -> Predicted:
        """The newest predictions: the last ``prediction`` event's, else ``meta.json``'s."""
        return self.meta.predicted if self.prediction is None else self.prediction


def _bytes(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, dict):
        return None
    return tuple(int(value.get(name) or 0) for name in _NAMES)


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _alive(pid: int, start_time: float | None) -> bool:
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return start_time is None or created <= start_time + 2.0


class _Session:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.meta_mtime: float | None = None
        self.state = SessionState(SessionMeta.from_directory(directory))
        self.events_at = 0
        self.events_inode: int | None = None
        self.ended = False
        self.verified = False
        self.sizes: tuple[int | None, int | None] = (None, None)

    def alive(self, pid: int, start_time: float | None) -> bool:
        """Whether the session's process runs: its start time checked once (pid reuse), then
        a signal-0 probe per scrape."""
        if not self.verified:
            self.verified = _alive(pid, start_time)
            return self.verified
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def update(self) -> None:
        directory, state = self.directory, self.state
        mtime = files.mtime(directory / META)
        if mtime is not None and mtime != self.meta_mtime:
            data = files.read_json(directory / META)
            if data is not None:
                self.meta_mtime = mtime
                state.meta = SessionMeta.from_dict(directory, data)
        if self.ended:
            return
        sizes = (_size(directory / EVENTS), _size(directory / SAMPLES))
        if sizes == self.sizes and sizes != (None, None):
            return  # nothing appended since the last scrape (rotation changes a size too)
        self.sizes = sizes
        self._events()
        self._samples()
        summary = files.read_json(directory / SUMMARY) if (directory / SUMMARY).exists() else None
        if summary is not None:
            self.ended = True
            state.live = False
            peak = summary.get("session_peak")
            if isinstance(peak, int):
                state.peak = max(state.peak or 0, peak)

    def _peak(self, value: Any) -> None:
        if isinstance(value, int) and (self.state.peak is None or value > self.state.peak):
            self.state.peak = value

    def _step(self, value: Any) -> None:
        if isinstance(value, int) and (self.state.step is None or value > self.state.step):
            self.state.step = value

    def _samples(self) -> None:
        # The last 16 KiB: the totals in it by a regex over the bytes (the step ends' session
        # peak covers everything before), the latest figures from the last line that is not a
        # window's peak: one JSON parse, whatever was appended since the last scrape.
        try:
            with open(self.directory / SAMPLES, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _TAIL_BYTES))
                data = handle.read(_TAIL_BYTES)
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        # the first piece may start mid-line
        data = data[data.find(b"\n") + 1 : end] if size > _TAIL_BYTES else data[:end]
        totals = _TOTAL.findall(data)
        if totals:
            self._peak(max(int(t) for t in totals))
        for line in reversed(data.split(b"\n")[:-1]):
            record = files.parse_line(line)
            if record is None:
                continue
            self._step(record.get("step"))
            if record.get("peak") is True:
                continue
            t, total = record.get("t"), record.get("total")
            if isinstance(t, int | float) and isinstance(total, int) and t >= self.state.time:
                self.state.time = float(t)
                self.state.current = total
                self.state.bytes = _bytes(record.get("bytes"))
            break

    def _other_event(self, record: dict[str, Any]) -> None:
        """A leak alert (counted) or a prediction (the newest kept)."""
        kind, data = record.get("kind"), record.get("data")
        if kind == "leak":
            self.state.leaks += 1
        elif kind == "prediction" and isinstance(data, dict):
            figures = data.get("predicted")
            if isinstance(figures, dict):
                self.state.prediction = predicted_pairs(figures)

    def _events(self) -> None:
        path = self.directory / EVENTS
        try:
            with open(path, "rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                size = handle.seek(0, os.SEEK_END)
                if inode != self.events_inode or size < self.events_at:
                    self.events_inode, self.events_at = inode, 0  # new or rotated file
                handle.seek(self.events_at)
                data = handle.read(size - self.events_at)
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.events_at += end
        step_end = None
        for line in data[:end].split(b"\n"):
            if b'"step_end"' in line:
                step_end = line
            elif b'"leak"' in line or b'"prediction"' in line:
                self._other_event(files.parse_line(line) or {})
        record = None if step_end is None else files.parse_line(step_end)
        if record is None:
            return
        found = record.get("data")
        data_: dict[str, Any] = found if isinstance(found, dict) else {}
        self._step(record.get("step"))
        self._peak(data_.get("peak"))
        self._peak(data_.get("session_peak"))
        t, total = record.get("t"), data_.get("total")
        if isinstance(t, int | float) and isinstance(total, int) and t >= self.state.time:
            self.state.time = float(t)
            self.state.current = total
            self.state.bytes = _bytes(data_.get("bytes"))


class StreamTail:
    """Every session under ``home`` at its latest, re-read at each :meth:`poll`.

    Args:
        home: the gpumem home (``$GPUMEM_HOME`` etc. when ``None``); never created.
        ended_for: how long (s) an ended session stays listed.
        stale_after: a session of another host without a write for this long (s) is ended.
        clock: the time source.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        ended_for: float = 600.0,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = sessions_dir(home, create=False)
        self.ended_for = ended_for
        self.stale_after = stale_after
        self.clock = clock
        self.host = socket.gethostname()
        self._sessions: dict[str, _Session] = {}

    def poll(self) -> list[SessionState]:
        """The listed sessions' states, in start order."""
        now = self.clock()
        try:
            names = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        except OSError:
            names = []
        for name in set(self._sessions) - set(names):
            del self._sessions[name]
        result = []
        for name in names:
            if name.startswith("."):
                continue
            session = self._sessions.get(name)
            if session is None:
                session = self._sessions[name] = _Session(self.root / name)
            try:
                session.update()
            except Exception:  # noqa: BLE001 - one broken session never hides the others
                continue
            state = session.state
            if not session.ended:
                meta = state.meta
                if host_matches(meta.host, self.host):
                    state.live = meta.pid is not None and session.alive(meta.pid, meta.start_time)
                else:
                    newest = files.mtime(session.directory / SAMPLES)
                    state.live = newest is not None and now - newest <= self.stale_after
            if not state.live:
                ended = files.mtime(session.directory / SUMMARY) or files.mtime(
                    session.directory / META
                )
                if ended is not None and now - ended > self.ended_for:
                    continue
            result.append(state)
        return result
