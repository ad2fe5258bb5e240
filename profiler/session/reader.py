"""The session stream reader: finds sessions under ``$GPUMEM_HOME`` and tails them incrementally.

:class:`SessionReader` keeps one small state per session directory: the byte offset reached in
each ``.jsonl`` file (only appended bytes are read; a rotated or truncated file is reopened), a
bounded history, and the metadata, modules and summary files (re-read when they change). Each
:meth:`SessionReader.poll` returns immutable :class:`SessionView` records.

It survives whatever it finds on disk: a torn last line is held back until it is complete (and is
never parsed if the writer died mid-line), a corrupt line or file is counted in ``skipped`` and
passed over, unknown fields are ignored, and a session whose ``meta.json`` is unreadable is still
shown with what its directory name says (``<start>-<host>-<pid>-<name>``).

A session is *live* while it has no ``summary.json`` and its pid exists (same host; for another
host, while its files changed in the last ``stale_after`` seconds). Ended sessions stay listed for
``ended_for`` seconds. Plain files only: no torch, no pandas.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from profiler.records import CATEGORIES
from profiler.stream import _safe_name, gpumem_home

__all__ = [
    "HistoryPoint",
    "JsonlTail",
    "SessionEvent",
    "SessionMeta",
    "SessionReader",
    "SessionView",
    "StepPoint",
    "prune_sessions",
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
        """What the directory name ``<YYYYmmddTHHMMSS.ffffff>-<host>-<pid>-<name>[-N]`` says."""
        parts = directory.name.split("-")
        start = pid = host = None
        name = directory.name
        if len(parts) in (4, 5) and parts[2].isdigit():
            try:
                stamp, _, micro = parts[0].partition(".")
                start = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S")) + int(micro) / 1e6
            except ValueError:
                start = None
            host, pid, name = parts[1], int(parts[2]), parts[3]
        return cls(
            id=directory.name,
            directory=str(directory),
            name=name,
            pid=pid,
            host=host,
            start_time=start,
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


class JsonlTail:
    """Reads the JSON lines appended to a file since the last call.

    Remembers its offset; a file replaced (rotation: another inode at the path) is drained and
    reopened, a truncated one is reread from the start. A line is parsed only once its newline
    is there. On first open of a file larger than ``initial_bytes`` only its last
    ``initial_bytes`` are read.
    """

    def __init__(self, path: Path, *, initial_bytes: int = 256 * 1024) -> None:
        self.path = path
        self.initial_bytes = initial_bytes
        self.skipped = 0
        self._handle: IO[bytes] | None = None
        self._inode: int | None = None
        self._buffer = b""
        self._drop_first = False

    def read(self) -> list[dict[str, Any]]:
        """The complete, well-formed JSON objects appended since the last call."""
        chunks: list[bytes] = []
        try:
            stat = os.stat(self.path)
        except OSError:
            stat = None
        if self._handle is not None and stat is not None and stat.st_ino != self._inode:
            chunks.append(self._handle.read())  # the rotated file's last lines
            self._close()
            records = self._split(b"".join(chunks), final=True)
            chunks = []
        else:
            records = []
        if self._handle is None:
            if stat is None:
                return records
            try:
                self._handle = open(self.path, "rb")  # noqa: SIM115
            except OSError:
                return records
            self._inode = os.fstat(self._handle.fileno()).st_ino
            size = stat.st_size
            if size > self.initial_bytes:
                self._handle.seek(size - self.initial_bytes)
                self._drop_first = True
        elif stat is not None and stat.st_size < self._handle.tell():
            self._handle.seek(0)  # truncated
            self._buffer = b""
        try:
            data = self._handle.read()
        except OSError:
            return records
        records.extend(self._split(data, final=False))
        return records

    def close(self) -> None:
        """Close the file (a later :meth:`read` reopens it at its end window)."""
        self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._inode = None
        self._buffer = b""
        self._drop_first = False

    def _split(self, data: bytes, *, final: bool) -> list[dict[str, Any]]:
        if not data and not final:
            return []
        data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = b"" if final else lines.pop()
        if len(self._buffer) > 4 * 1024 * 1024:  # a "line" this long is garbage
            self._buffer = b""
            self.skipped += 1
        if self._drop_first and lines:
            lines.pop(0)
            self._drop_first = False
        out: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                self.skipped += 1
                continue
            if isinstance(value, dict):
                out.append(value)
            else:
                self.skipped += 1
        return out


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` if missing, unreadable or not an object."""
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


class _SessionState:
    """What the reader keeps about one session between polls."""

    def __init__(self, directory: Path, history: int, events: int) -> None:
        self.directory = directory
        self.meta = SessionMeta.from_directory(directory)
        self.meta_mtime: float | None = None
        self.samples = JsonlTail(directory / "samples.jsonl")
        self.events_tail = JsonlTail(directory / "events.jsonl")
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
        meta_path = self.directory / "meta.json"
        mtime = _mtime(meta_path)
        if mtime is not None and mtime != self.meta_mtime:
            self.meta_mtime = mtime
            data = _read_json(meta_path)
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
        modules_path = self.directory / "modules.json"
        mtime = _mtime(modules_path)
        if mtime is not None and mtime != self.modules_mtime:
            self.modules_mtime = mtime
            data = _read_json(modules_path)
            pairs = data.get("activations") if data is not None else None
            if isinstance(pairs, list):
                self.modules = tuple(
                    (str(p[0]), int(p[1]))
                    for p in pairs
                    if isinstance(p, list) and len(p) == 2 and _int_or_none(p[1]) is not None
                )
        if not self.summary_read:
            summary_path = self.directory / "summary.json"
            if summary_path.exists():
                self.summary_read = True
                data = _read_json(summary_path)
                if data is None:
                    self.bad_files += 1
                    data = {"status": "unreadable", "end_time": _mtime(summary_path)}
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


def _default_pid_exists(pid: int) -> bool:
    import psutil

    return bool(psutil.pid_exists(pid))


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
    for name in ("samples.jsonl", "events.jsonl", "meta.json"):
        mtime = _mtime(directory / name)
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
        self.home = gpumem_home(home, create=False)
        self.root = self.home / "sessions"
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
        return host is None or host == self.host or host == _safe_name(self.host)

    def _long_ended(self, directory: Path, now: float) -> bool:
        """Whether a session found for the first time ended more than ``ended_for`` ago."""
        summary_path = directory / "summary.json"
        summary_mtime = _mtime(summary_path)
        if summary_mtime is not None:
            end = _float_or_none((_read_json(summary_path) or {}).get("end_time"))
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
                end = _mtime(state.directory / "summary.json") or now
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


def prune_sessions(
    home: str | os.PathLike[str] | None = None,
    *,
    keep: int = 64,
    pid_exists: Callable[[int], bool] | None = None,
    host: str | None = None,
) -> list[Path]:
    """Remove the oldest ended session directories beyond the newest ``keep``; return them.

    A session counts as ended when it has a ``summary.json``, or its pid no longer exists on this
    host. Live sessions and sessions of other hosts without a summary are never removed.
    """
    root = gpumem_home(home, create=False) / "sessions"
    pid_exists = pid_exists or _default_pid_exists
    this_host = host if host is not None else socket.gethostname()
    try:
        names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError:
        return []
    ended: list[Path] = []
    for name in names:
        directory = root / name
        if (directory / "summary.json").exists():
            ended.append(directory)
            continue
        meta = SessionMeta.from_directory(directory)
        same = meta.host in (None, this_host, _safe_name(this_host))
        if same and meta.pid is not None and not pid_exists(meta.pid):
            ended.append(directory)
    doomed = ended[: max(0, len(ended) - keep)]
    for directory in doomed:
        shutil.rmtree(directory, ignore_errors=True)
    return doomed


def iter_lines(path: Path) -> Iterable[dict[str, Any]]:
    """Every well-formed JSON object in a ``.jsonl`` file (corrupt and torn lines skipped)."""
    tail = JsonlTail(path, initial_bytes=1 << 62)
    records = tail.read()
    tail.close()
    return records
