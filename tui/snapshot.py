"""The dashboard's data model: immutable snapshots built off the UI thread, and their analysis.

A :class:`SnapshotBuilder` asks a device source (NVML, a fake, a test script) and a session reader
for everything ``gpumem top`` shows and returns a :class:`Snapshot`. It never raises: a source
that fails leaves its message in the snapshot (``device_error``, ``process_error``,
``session_error``), which the screen shows in place of that panel. :data:`EMPTY_SNAPSHOT` is what
the screen holds before the first snapshot arrives.

The analysis here (capacity, OOM risk, alerts) is plain functions of a snapshot, shared by the
Textual widgets and by ``gpumem top --once``. No Textual import here.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from profiler.backends.base import DeviceInfo, DeviceSource, ProcessInfo
from profiler.records import CATEGORIES
from profiler.session.jobs import JobView, group_jobs
from profiler.session.reader import SessionView
from profiler.text import printable
from profiler.units import format_bytes

__all__ = [
    "EMPTY_SNAPSHOT",
    "PROCESS_SORTS",
    "Alert",
    "OomRisk",
    "Snapshot",
    "SnapshotBuilder",
    "alerts_for",
    "oom_risk",
    "session_capacity",
    "sort_processes",
]

#: The process orders ``s`` cycles through: (name, key, reverse).
PROCESS_SORTS: tuple[str, ...] = ("memory", "pid", "user", "command")


class SessionSource(Protocol):
    """Anything that lists sessions (a :class:`~profiler.session.reader.SessionReader`, a fake)."""

    def poll(self) -> list[SessionView]:
        """Every listed session, live ones first."""
        ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one frame of ``gpumem top`` shows, taken at ``time``."""

    time: float
    devices: tuple[DeviceInfo, ...] = ()
    device_error: str | None = None
    processes: tuple[ProcessInfo, ...] = ()
    process_error: str | None = None
    sessions: tuple[SessionView, ...] = ()
    session_error: str | None = None
    #: the sessions with each job's folded into one :class:`JobView`, in listing order
    #: (:func:`~profiler.session.jobs.group_jobs`; computed once, on the worker thread)
    groups: tuple[JobView | SessionView, ...] = ()

    def __post_init__(self) -> None:
        if self.sessions and not self.groups:
            capacity = functools.partial(_capacity_on, self.devices)
            object.__setattr__(self, "groups", tuple(group_jobs(self.sessions, capacity)))

    def session(self, session_id: str | None) -> SessionView | None:
        """The session with directory name ``session_id``, if listed."""
        for view in self.sessions:
            if view.id == session_id:
                return view
        return None

    def jobs(self) -> list[JobView]:
        """The distributed jobs among the sessions (sessions sharing a job id)."""
        return [item for item in self.groups if isinstance(item, JobView)]

    def job(self, job_id: str | None) -> JobView | None:
        """The job ``job_id``, if any of its sessions is listed."""
        for item in self.groups:
            if isinstance(item, JobView) and item.job_id == job_id:
                return item
        return None

    def device(self, index: int | None) -> DeviceInfo | None:
        """The device with NVML index ``index``, if listed."""
        for info in self.devices:
            if info.index == index:
                return info
        return None


#: The snapshot a screen holds before the first one arrives.
EMPTY_SNAPSHOT = Snapshot(time=0.0)


class SnapshotBuilder:
    """Builds :class:`Snapshot` objects from a device source and a session source.

    Args:
        source: the device source, or ``None`` where there is none (no NVML, no GPU).
        sessions: the session source, or ``None`` to list none.
        clock: the time stamped on snapshots (tests freeze it).
        source_error: why there is no device source, shown as the banner.
        source_factory: called once, by the first :meth:`build` (so on the worker thread, never
            the UI thread), to open the device source; what it raises becomes ``source_error``.
    """

    def __init__(
        self,
        source: DeviceSource | None,
        sessions: SessionSource | None,
        *,
        clock: Callable[[], float] = time.time,
        source_error: str | None = None,
        source_factory: Callable[[], DeviceSource] | None = None,
    ) -> None:
        self.source = source
        self.sessions = sessions
        self.clock = clock
        self.source_error = source_error
        self._factory = source_factory
        #: (job ids, session ids) the screens show in detail, passed to a reader with ``focus``
        self.focus: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())

    def build(self) -> Snapshot:
        """One snapshot; every failure is caught and described in the snapshot."""
        if self._factory is not None:
            factory, self._factory = self._factory, None
            try:
                self.source = factory()
            except Exception as exc:
                self.source = None
                self.source_error = _describe(exc)
        devices: tuple[DeviceInfo, ...] = ()
        processes: tuple[ProcessInfo, ...] = ()
        device_error = process_error = session_error = None
        if self.source is None:
            device_error = self.source_error or "no GPU device source"
        else:
            try:
                devices = tuple(self.source.devices())
            except Exception as exc:
                device_error = f"devices unavailable: {_describe(exc)}"
            try:
                processes = tuple(self.source.processes())
            except Exception as exc:
                process_error = f"processes unavailable: {_describe(exc)}"
        sessions: tuple[SessionView, ...] = ()
        if self.sessions is not None:
            try:
                focus = getattr(self.sessions, "focus", None)
                if callable(focus):
                    focus(*self.focus)
                sessions = tuple(self.sessions.poll())
            except Exception as exc:
                session_error = f"sessions unavailable: {_describe(exc)}"
        return Snapshot(
            time=self.clock(),
            devices=tuple(_clean_device(d) for d in devices),
            device_error=_clean(device_error),
            processes=tuple(_clean_process(p) for p in processes),
            process_error=_clean(process_error),
            sessions=sessions,  # the reader made their text printable
            session_error=_clean(session_error),
        )


def _clean(text: str | None, limit: int = 500) -> str | None:
    """Text from NVML or another process (a name, a command line) made safe for a terminal."""
    return None if text is None else printable(text, limit=limit)


def _clean_device(info: DeviceInfo) -> DeviceInfo:
    name, uuid = _clean(info.name, 100), _clean(info.uuid, 100)
    if name == info.name and uuid == info.uuid:
        return info
    return dataclasses.replace(info, name=name, uuid=uuid)


@functools.lru_cache(maxsize=4096)  # a process seldom changes between two refreshes
def _clean_process(info: ProcessInfo) -> ProcessInfo:
    name, user, command = _clean(info.name, 200), _clean(info.user, 64), _clean(info.command, 2000)
    if name == info.name and user == info.user and command == info.command:
        return info
    return dataclasses.replace(info, name=name, user=user, command=command)


def _describe(exc: BaseException) -> str:
    one_line = getattr(exc, "one_line", None)
    text = one_line() if callable(one_line) else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def sort_processes(processes: Sequence[ProcessInfo], key: str) -> list[ProcessInfo]:
    """``processes`` in the order ``key`` names (one of :data:`PROCESS_SORTS`)."""
    if key == "pid":
        return sorted(processes, key=lambda p: (p.pid, p.device_index))
    if key == "user":
        return sorted(processes, key=lambda p: (p.user or "~", -(p.gpu_memory or 0), p.pid))
    if key == "command":
        return sorted(processes, key=lambda p: ((p.command or p.name or "~"), p.pid))
    return sorted(processes, key=lambda p: (-(p.gpu_memory or 0), p.pid))


def _capacity_on(devices: Sequence[DeviceInfo], session: SessionView) -> int | None:
    return session_capacity(session, devices)


def session_capacity(session: SessionView, devices: Sequence[DeviceInfo]) -> int | None:
    """The bytes the session can grow into: a simulated capacity, else its GPU's total."""
    if session.meta.capacity is not None:
        return session.meta.capacity
    if session.nvml is not None:
        total = session.nvml.get("device_total")
        if isinstance(total, int) and total > 0:
            return total
    device_type = (session.meta.device or "").split(":")[0]
    if device_type == "cuda" and session.meta.device_index is not None:
        for info in devices:
            if info.index == session.meta.device_index:
                return info.memory_total
    return None


@dataclass(frozen=True, slots=True)
class OomRisk:
    """Growth of a session's step-end totals and the time left until it fills its capacity."""

    growth_per_second: float  # bytes/s, least squares over the recent step ends
    growth_per_step: float  # bytes/step
    current: int
    capacity: int
    seconds_to_capacity: float | None  # None when not growing


def oom_risk(session: SessionView, capacity: int | None, *, window: int = 10) -> OomRisk | None:
    """The growth over the last ``window`` step ends and the time to ``capacity`` at that rate.

    ``None`` without a capacity or with fewer than three step ends.
    """
    steps = session.steps[-window:]
    if capacity is None or capacity <= 0 or len(steps) < 3:
        return None
    per_second = _slope([s.time for s in steps], [float(s.total) for s in steps])
    per_step = _slope([float(s.step) for s in steps], [float(s.total) for s in steps])
    current = max(steps[-1].peak, steps[-1].total)
    seconds = None
    if per_second > 0 and per_step > 0:
        seconds = max(0.0, (capacity - current) / per_second)
    return OomRisk(per_second, per_step, current, capacity, seconds)


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


@dataclass(frozen=True, slots=True)
class Alert:
    """One line in a session's alerts panel, with the fix where one is known."""

    severity: str  # "critical", "warning" or "info"
    kind: str  # "oom_risk", "oom", "leak", "suggestion", "warning", ...
    title: str
    fix: str | None = None
    step: int | None = None


def format_duration(seconds: float) -> str:
    """``95`` → ``1m35s``; ``7300`` → ``2h01m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def alerts_for(session: SessionView, devices: Sequence[DeviceInfo]) -> tuple[Alert, ...]:
    """The session's alerts, most severe first: OOM risk, then its events (newest first)."""
    alerts: list[Alert] = []
    capacity = session_capacity(session, devices)
    risk = oom_risk(session, capacity)
    if risk is not None and risk.seconds_to_capacity is not None:
        left = risk.seconds_to_capacity
        severity = "critical" if left < 300 else ("warning" if left < 3600 else "info")
        alerts.append(
            Alert(
                severity,
                "oom_risk",
                f"OOM risk: full in {format_duration(left)} at "
                f"{format_bytes(risk.growth_per_step, signed=True)}/step "
                f"({format_bytes(risk.current)} of {format_bytes(risk.capacity)})",
                "look for tensors kept across steps (appended losses, caches, hooks)",
                session.step,
            )
        )
    elif capacity and session.peak is not None and session.peak >= 0.9 * capacity:
        alerts.append(
            Alert(
                "warning",
                "oom_risk",
                f"peak {format_bytes(session.peak)} is "
                f"{100 * session.peak / capacity:.0f}% of {format_bytes(capacity)}",
                None,
                session.step,
            )
        )
    seen: set[tuple[str, str]] = set()
    cleared: set[str] = set()
    for event in reversed(session.events):  # newest first
        if event.kind == "leak" and isinstance(event.data, dict):
            site = str(event.data.get("site"))
            if event.data.get("cleared"):
                cleared.add(site)  # a leak that plateaued: its earlier alerts are void
                continue
            if site in cleared:
                continue
        alert = _event_alert(event.kind, event.message, event.data, event.step)
        if alert is None or (alert.kind, alert.title) in seen:
            continue
        seen.add((alert.kind, alert.title))
        alerts.append(alert)
    order = {"critical": 0, "warning": 1, "info": 2}
    alerts.sort(key=lambda a: order.get(a.severity, 3))  # stable: newest first within a level
    return tuple(alerts)


_TITLE_LIMIT = 200


def _event_alert(kind: str, message: str, data: Any, step: int) -> Alert | None:
    data = data if isinstance(data, dict) else {}
    if kind == "leak":
        fix = _text(data.get("suggestion"))
        title = message or "leak"
        if fix and fix in title:
            title = title.replace(fix, "").strip()
        if len(title) > _TITLE_LIMIT:
            title = title[: _TITLE_LIMIT - 1].rstrip() + "…"
        per_step = data.get("bytes_per_step")
        if not message and isinstance(per_step, int):
            title = (
                f"leak in {data.get('category', '?')}: {format_bytes(per_step, signed=True)}/step"
            )
        site = data.get("site")
        if site and str(site) not in title:
            title = f"{title} at {site}"
        return Alert("warning", "leak", title, fix, step)
    if kind == "oom":
        return Alert(
            "critical", "oom", message or "out of memory", _text(data.get("suggestion")), step
        )
    if kind == "suggestion":
        title = _text(data.get("title")) or message or "suggestion"
        saves = data.get("saves_bytes")
        if isinstance(saves, int) and saves > 0:
            title = f"{title} (saves {format_bytes(saves)})"
        fits = data.get("fits")
        if fits is True:
            title = f"{title}, fits"
        return Alert("info", "suggestion", title, message if message != title else None, step)
    if kind in ("warning", "leak_hunt"):
        return Alert("warning" if kind == "warning" else "info", kind, message or kind, None, step)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def category_rows(session: SessionView) -> list[tuple[str, int, int | None, int | None]]:
    """(category, now, at the last step's peak, predicted) for each category with any bytes.

    "At peak" is what each category held at the moment the last finished step peaked: the figure
    that predictions (of peak memory) are comparable with. ``None`` before the first step end.
    """
    predicted = dict(session.predicted)
    size = len(CATEGORIES)
    now = session.bytes or (0,) * size
    at_peak = session.steps[-1].peak_bytes if session.steps else None
    rows = []
    for i, category in enumerate(CATEGORIES):
        guess = predicted.get(str(category))
        peak = None if at_peak is None else at_peak[i]
        if now[i] or guess or peak:
            rows.append((str(category), now[i], peak, guess))
    return rows
