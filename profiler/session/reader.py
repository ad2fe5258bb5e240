"""The session stream reader: finds sessions under ``$GPUMEM_HOME`` and tails them incrementally.

:class:`SessionReader` keeps one small state per session directory: the byte offset reached in
each ``.jsonl`` file (only appended bytes are read; a rotated or truncated file is reopened), a
bounded history, and the metadata, modules and summary files (re-read when they change). Each
:meth:`SessionReader.poll` returns immutable :class:`SessionView` records.

It survives whatever it finds on disk: a torn last line is held back until it is complete (and is
never parsed if the writer died mid-line), a corrupt line or file is counted in ``skipped`` and
passed over, unknown fields are ignored, and a session whose ``meta.json`` is unreadable is still
shown with what its directory name says (parsed by :mod:`profiler.session.layout`). Files are
opened in :mod:`profiler.session.files` only.

A session is *live* while it has no ``summary.json`` and its pid exists (same host; for another
host, while its files changed in the last ``stale_after`` seconds). Ended sessions stay listed for
``ended_for`` seconds. Plain files only: no torch, no pandas.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.records import CATEGORIES
from profiler.session import files
from profiler.session.files import JsonlTail
from profiler.session.layout import (
    EVENTS,
    META,
    MODULES,
    SAMPLES,
    SUMMARY,
    host_matches,
    parse_session_name,
    sessions_dir,
)

__all__ = [
    "HistoryPoint",
    "SessionEvent",
    "SessionMeta",
    "SessionReader",
    "SessionView",
    "StepPoint",
]

_CATEGORY_NAMES = tuple(str(c) for c in CATEGORIES)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:
        return int(value)
    return None


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value == value:
        return float(value)
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _bytes_tuple(value: Any) -> tuple[int, ...]:
    """Per-category bytes from ``{"weights": n, ...}`` in :data:`CATEGORIES` order (missing: 0)."""
    if not isinstance(value, Mapping):
        return _ZEROS
    get = value.get
    values = tuple([get(name, 0) for name in _CATEGORY_NAMES])
    for item in values:
        if type(item) is not int:  # rare: a float, a string, null; clean one by one
            return tuple(_int_or_none(v) or 0 for v in values)
    return values


_ZEROS = (0,) * len(_CATEGORY_NAMES)


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """What ``meta.json`` (or, failing that, the directory name) says about a session."""

    id: str
    directory: str
    name: str
    pid: int | None
    host: str | None
    start_time: float | None
    rank: int | None = None
    world_size: int | None = None
    device: str | None = None
    device_index: int | None = None
    model_class: str | None = None
    param_count: int | None = None
    command: str | None = None
    mode: str | None = None
    capacity: int | None = None
    predicted: tuple[tuple[str, int | None], ...] = ()
    schema: int | None = None
    local_rank: int | None = None
    job_id: str | None = None

    @classmethod
    def from_dict(cls, directory: Path, data: Mapping[str, Any]) -> SessionMeta:
        """Read the known fields of ``data``; anything missing or mistyped becomes ``None``."""
        fallback = cls.from_directory(directory)
        predicted = data.get("predicted")
        pairs: tuple[tuple[str, int | None], ...] = ()
        if isinstance(predicted, Mapping):
            pairs = tuple(
                (name, _int_or_none(predicted.get(name)))
                for name in _CATEGORY_NAMES
                if name in predicted
            )
        return cls(
            id=directory.name,
            directory=str(directory),
            name=_str_or_none(data.get("name")) or fallback.name,
            pid=_int_or_none(data.get("pid")) or fallback.pid,
            host=_str_or_none(data.get("host")) or fallback.host,
            start_time=_float_or_none(data.get("start_time")) or fallback.start_time,
            rank=_int_or_none(data.get("rank")),
            world_size=_int_or_none(data.get("world_size")),
            local_rank=_int_or_none(data.get("local_rank")),
            job_id=_str_or_none(data.get("job_id")),
            device=_str_or_none(data.get("device")),
            device_index=_int_or_none(data.get("device_index")),
            model_class=_str_or_none(data.get("model_class")),
            param_count=_int_or_none(data.get("param_count")),
            command=_str_or_none(data.get("command")),
            mode=_str_or_none(data.get("mode")),
            capacity=_int_or_none(data.get("capacity")),
            predicted=pairs,
            schema=_int_or_none(data.get("v")),
        )

    @classmethod
    def from_directory(cls, directory: Path) -> SessionMeta:
        """What the directory name says (:func:`~profiler.session.layout.parse_session_name`)."""
        parsed = parse_session_name(directory.name)
        if parsed is None:
            return cls(
                id=directory.name,
                directory=str(directory),
                name=directory.name,
                pid=None,
                host=None,
                start_time=None,
            )
        return cls(
            id=directory.name,
            directory=str(directory),
            name=parsed.name,
            pid=parsed.pid,
            host=parsed.host,
            start_time=parsed.start_time,
        )


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One written sample: the total and the bytes per category at a moment."""

    time: float
    step: int
    total: int
    bytes: tuple[int, ...]
    peak: bool = False


@dataclass(frozen=True, slots=True)
class StepPoint:
    """One step end as the stream recorded it."""

    step: int
    time: float
    duration: float | None
    total: int
    peak: int
    bytes: tuple[int, ...]
    session_peak: int | None = None
    peak_bytes: tuple[int, ...] | None = None  # per category at the step's peak


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """An event other than a step end: a leak, an OOM, a suggestion, a warning."""

    time: float
    step: int
    kind: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session at the moment of a poll: who, where it stands, its recent history."""

    meta: SessionMeta
    live: bool
    end_time: float | None
    status: str | None  # None while live; "ok", "error" or "killed" once ended
    last_update: float | None
    step: int | None
    phase: str | None
    module: str | None
    current: int | None
    bytes: tuple[int, ...] | None
    peak: int | None
    allocator: Mapping[str, Any] | None
    nvml: Mapping[str, Any] | None
    history: tuple[HistoryPoint, ...]
    steps: tuple[StepPoint, ...]
    events: tuple[SessionEvent, ...]
    modules: tuple[tuple[str, int], ...]
    summary: Mapping[str, Any] | None
    error: str | None
    skipped: int

    @property
    def id(self) -> str:
        """The session directory's name: unique and sorted by start time."""
        return self.meta.id


class _SessionState:
    """What the reader keeps about one session between polls."""

    def __init__(self, directory: Path, history: int, events: int) -> None:
        self.directory = directory
        self.meta = SessionMeta.from_directory(directory)
        self.meta_mtime: float | None = None
        self.samples = JsonlTail(directory / SAMPLES)
        self.events_tail = JsonlTail(directory / EVENTS)
        self.history: deque[HistoryPoint] = deque(maxlen=history)
        self.steps: deque[StepPoint] = deque(maxlen=history)
        self.events: deque[SessionEvent] = deque(maxlen=events)
        self.latest: dict[str, Any] | None = None
        self.peak: int | None = None
        self.step: int | None = None
        self.last_update: float | None = None
        self.modules: tuple[tuple[str, int], ...] = ()
        self.modules_mtime: float | None = None
        self.summary: dict[str, Any] | None = None
        self.summary_read = False
        self.error: str | None = None
        self.ended_at: float | None = None
        self.bad_files = 0

    def update(self) -> None:
        """Read whatever changed on disk since the last call."""
        meta_path = self.directory / META
        mtime = files.mtime(meta_path)
        if mtime is not None and mtime != self.meta_mtime:
            self.meta_mtime = mtime
            data = files.read_json(meta_path)
            if data is None:
                self.bad_files += 1
                self.error = "meta.json unreadable"
            else:
                self.meta = SessionMeta.from_dict(self.directory, data)
                self.error = None
        for record in self.samples.read():
            self._sample(record)
        for record in self.events_tail.read():
            self._event(record)
        modules_path = self.directory / MODULES
        mtime = files.mtime(modules_path)
        if mtime is not None and mtime != self.modules_mtime:
            self.modules_mtime = mtime
            data = files.read_json(modules_path)
            pairs = data.get("activations") if data is not None else None
            if isinstance(pairs, list):
                self.modules = tuple(
                    (str(p[0]), int(p[1]))
                    for p in pairs
                    if isinstance(p, list) and len(p) == 2 and _int_or_none(p[1]) is not None
                )
        if not self.summary_read:
            summary_path = self.directory / SUMMARY
            if summary_path.exists():
                self.summary_read = True
                data = files.read_json(summary_path)
                if data is None:
                    self.bad_files += 1
                    data = {"status": "unreadable", "end_time": files.mtime(summary_path)}
                self.summary = data
                peak = _int_or_none(data.get("session_peak"))
                if peak is not None and (self.peak is None or peak > self.peak):
                    self.peak = peak
                self.samples.close()
                self.events_tail.close()

    def _touch(self, t: float | None, step: int | None) -> None:
        if t is not None and (self.last_update is None or t > self.last_update):
            self.last_update = t
        if step is not None and (self.step is None or step > self.step):
            self.step = step

    def _sample(self, record: dict[str, Any]) -> None:
        t = _float_or_none(record.get("t"))
        total = _int_or_none(record.get("total"))
        if t is None or total is None:
            self.samples.skipped += 1
            return
        step = _int_or_none(record.get("step")) or 0
        point = HistoryPoint(
            t, step, total, _bytes_tuple(record.get("bytes")), record.get("peak") is True
        )
        self.history.append(point)
        if self.peak is None or total > self.peak:
            self.peak = total
        if not point.peak:
            self.latest = record
        self._touch(t, step)

    def _event(self, record: dict[str, Any]) -> None:
        t = _float_or_none(record.get("t"))
        kind = _str_or_none(record.get("kind"))
        if t is None or kind is None:
            self.events_tail.skipped += 1
            return
        step = _int_or_none(record.get("step")) or 0
        data = record.get("data")
        data = data if isinstance(data, dict) else {}
        if kind == "step_end":
            total = _int_or_none(data.get("total"))
            if total is None:
                self.events_tail.skipped += 1
                return
            peak = _int_or_none(data.get("peak")) or total
            session_peak = _int_or_none(data.get("session_peak"))
            peak_bytes = data.get("peak_bytes")
            point = StepPoint(
                step,
                t,
                _float_or_none(data.get("duration")),
                total,
                peak,
                _bytes_tuple(data.get("bytes")),
                session_peak,
                _bytes_tuple(peak_bytes) if isinstance(peak_bytes, Mapping) else None,
            )
            if self.steps and self.steps[-1].step == step:
                self.steps[-1] = point
            else:
                self.steps.append(point)
            best = max(peak, session_peak or 0)
            if self.peak is None or best > self.peak:
                self.peak = best
        else:
            message = record.get("message")
            self.events.append(SessionEvent(t, step, kind, str(message or ""), data))
        self._touch(t, step)

    def view(
        self,
        live: bool,
        end_time: float | None,
        status: str | None,
        summary: Mapping[str, Any] | None,
    ) -> SessionView:
        latest = self.latest
        current = bytes_ = phase = module = allocator = nvml = None
        if latest is not None:
            current = _int_or_none(latest.get("total"))
            bytes_ = _bytes_tuple(latest.get("bytes"))
            phase = _str_or_none(latest.get("phase"))
            module = _str_or_none(latest.get("module"))
            alloc = latest.get("allocator")
            allocator = alloc if isinstance(alloc, dict) else None
            nv = latest.get("nvml")
            nvml = nv if isinstance(nv, dict) else None
        if self.steps and (
            latest is None or self.steps[-1].time >= (_float_or_none(latest.get("t")) or 0.0)
        ):
            last_step = self.steps[-1]
            current, bytes_ = last_step.total, last_step.bytes
        return SessionView(
            meta=self.meta,
            live=live,
            end_time=end_time,
            status=status,
            last_update=self.last_update,
            step=self.step,
            phase=phase,
            module=module,
            current=current,
            bytes=bytes_,
            peak=self.peak,
            allocator=allocator,
            nvml=nvml,
            history=tuple(self.history),
            steps=tuple(self.steps),
            events=tuple(self.events),
            modules=self.modules,
            summary=summary,
            error=self.error,
            skipped=self.samples.skipped + self.events_tail.skipped + self.bad_files,
        )

    def close(self) -> None:
        self.samples.close()
        self.events_tail.close()


def _process_alive(pid: int, start_time: float | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``start_time`` (not a reuse)."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    except Exception:
        return bool(psutil.pid_exists(pid))
    return start_time is None or created <= start_time + 2.0


def _newest_mtime(directory: Path) -> float | None:
    newest = None
    for name in (SAMPLES, EVENTS, META):
        mtime = files.mtime(directory / name)
        if mtime is not None and (newest is None or mtime > newest):
            newest = mtime
    return newest


class SessionReader:
    """Finds and tails every session under ``home``; :meth:`poll` returns their views.

    Args:
        home: the gpumem home (``$GPUMEM_HOME`` etc. when ``None``); never created by reading.
        history: how many samples and step ends to keep per session.
        events: how many other events to keep per session.
        ended_for: how long (s) an ended session stays listed.
        stale_after: for a session on another host, how long (s) without a write means ended.
        clock: the time source (tests freeze it).
        pid_exists: tells whether a pid exists on this host (tests script it); by default a
            pid counts only if its process started no later than the session (pid reuse).
        host: this host's name.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        history: int = 600,
        events: int = 200,
        ended_for: float = 600.0,
        stale_after: float = 60.0,
        clock: Callable[[], float] = time.time,
        pid_exists: Callable[[int], bool] | None = None,
        host: str | None = None,
    ) -> None:
        self.root = sessions_dir(home, create=False)
        self.home = self.root.parent
        self.history = history
        self.events = events
        self.ended_for = ended_for
        self.stale_after = stale_after
        self.clock = clock
        self.pid_exists = pid_exists
        self.host = host if host is not None else socket.gethostname()
        self._states: dict[str, _SessionState] = {}
        self._ignored: set[str] = set()

    def poll(self) -> list[SessionView]:
        """Read what changed and return every listed session: live ones first (by start time),
        then ended ones (most recently ended first)."""
        now = self.clock()
        try:
            names = [entry.name for entry in os.scandir(self.root) if entry.is_dir()]
        except OSError:
            names = []
        present = set(names)
        for name in list(self._states):
            if name not in present:
                self._states.pop(name).close()
        self._ignored &= present
        live: list[SessionView] = []
        ended: list[SessionView] = []
        for name in sorted(names):
            if name in self._ignored or name.startswith("."):
                continue
            state = self._states.get(name)
            directory = self.root / name
            if state is None:
                if self._long_ended(directory, now):
                    self._ignored.add(name)
                    continue
                state = _SessionState(directory, self.history, self.events)
                self._states[name] = state
            state.update()
            view = self._judge(state, now)
            if view is None:
                self._states.pop(name).close()
                self._ignored.add(name)
            elif view.live:
                live.append(view)
            else:
                ended.append(view)
        ended.sort(key=lambda v: -(v.end_time or 0.0))
        return live + ended

    def close(self) -> None:
        """Close every open file."""
        for state in self._states.values():
            state.close()
        self._states.clear()

    def _same_host(self, host: str | None) -> bool:
        return host_matches(host, self.host)

    def _long_ended(self, directory: Path, now: float) -> bool:
        """Whether a session found for the first time ended more than ``ended_for`` ago."""
        summary_path = directory / SUMMARY
        summary_mtime = files.mtime(summary_path)
        if summary_mtime is not None:
            end = _float_or_none((files.read_json(summary_path) or {}).get("end_time"))
            return now - (summary_mtime if end is None else end) > self.ended_for
        meta = SessionMeta.from_directory(directory)
        newest = _newest_mtime(directory)
        if newest is None or now - newest <= self.ended_for:
            return False
        if self._same_host(meta.host) and meta.pid is not None:
            return not self._alive(meta.pid, meta.start_time)
        return True

    def _alive(self, pid: int, start_time: float | None) -> bool:
        if self.pid_exists is not None:
            return self.pid_exists(pid)
        return _process_alive(pid, start_time)

    def _judge(self, state: _SessionState, now: float) -> SessionView | None:
        summary = state.summary
        if summary is not None:
            end = _float_or_none(summary.get("end_time"))
            if end is None:
                end = files.mtime(state.directory / SUMMARY) or now
            status = _str_or_none(summary.get("status")) or "ok"
            if now - end > self.ended_for:
                return None
            return state.view(
                False,
                end,
                status,
                summary.get("summary") if isinstance(summary.get("summary"), Mapping) else summary,
            )
        meta = state.meta
        if self._same_host(meta.host):
            alive = meta.pid is not None and self._alive(meta.pid, meta.start_time)
        else:
            newest = _newest_mtime(state.directory)
            alive = newest is not None and now - newest <= self.stale_after
        if alive:
            state.ended_at = None
            return state.view(True, None, None, None)
        if state.ended_at is None:
            state.ended_at = state.last_update or _newest_mtime(state.directory) or now
        if now - state.ended_at > self.ended_for:
            return None
        return state.view(False, state.ended_at, "killed", None)
