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

A session is *live* while it has no ``summary.json`` and its pid exists, where its pid can be
checked (same host, kernel boot and pid namespace:
:func:`~profiler.session.layout.same_machine`); elsewhere (another container sharing the home,
another host), while its files changed in the last ``stale_after`` seconds (the writer's
heartbeat touches them every second). Ended sessions stay listed for ``ended_for`` seconds.
Every string read is made :func:`~profiler.text.printable`; a meta of another schema version
is shown as ``unsupported schema vN``, its lines not read. Plain files only: no torch, no pandas.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from profiler.session import files
from profiler.session.fields import (
    HistoryPoint,
    Prediction,
    SessionEvent,
    SessionMeta,
    SessionView,
    StepPoint,
    bytes_tuple,
    clean,
    float_or_none,
    int_or_none,
    str_or_none,
)
from profiler.session.files import JsonlTail
from profiler.session.history import History, SampleLog, highest_total, latest_sample
from profiler.session.layout import (
    EVENTS,
    META,
    MODULES,
    SAMPLES,
    SUMMARY,
    host_matches,
    same_machine,
    sessions_dir,
    this_machine,
)
from profiler.session.schema import SCHEMA_VERSION
from profiler.text import printable

__all__ = [
    "HistoryPoint",
    "Prediction",
    "SessionEvent",
    "SessionMeta",
    "SessionReader",
    "SessionView",
    "StepPoint",
]

#: Seconds between two checks of a live session's process start time (pid reuse).
_REVERIFY = 30.0

_END_TIME = re.compile(rb'"end_time":\s*(-?[0-9]{1,20}(?:\.[0-9]{1,20})?(?:[eE][+-]?[0-9]{1,3})?)')


class _SessionState:
    """What the reader keeps about one session between polls."""

    def __init__(self, directory: Path, history: int, events: int) -> None:
        self.directory = directory
        base = os.fspath(directory)
        self.paths = {name: os.path.join(base, name) for name in (META, MODULES, SUMMARY)}
        self.meta = SessionMeta.from_directory(directory)
        self.meta_mtime: float | None = None
        self.samples = JsonlTail(directory / SAMPLES)
        self.events_tail = JsonlTail(directory / EVENTS)
        self.log = SampleLog(history)
        self.sampling = True  # False while only its step ends are read (a job's rank)
        self.by_step: Callable[[_SessionState], bool] | None = None
        self.steps: deque[StepPoint] = deque(maxlen=history)
        self.events: deque[SessionEvent] = deque(maxlen=events)
        self.events_seen = 0
        self.latest: dict[str, Any] | None = None
        self.latest_time = 0.0
        self.latest_bytes: tuple[int, ...] | None = None
        self.prediction: Prediction | None = None
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
        self.verified_at: float | None = None  # when the pid's start time was last checked
        self.shown: tuple[tuple[object, ...], SessionView] | None = None
        self.here: tuple[SessionMeta, bool] | None = None  # (meta, whether its pid is ours)
        self.steps_shown: tuple[StepPoint, ...] = ()

    def update(self) -> None:
        """Read whatever changed on disk since the last call (where :attr:`by_step` says so,
        once the meta is read: not the samples, only the events; a rank of a job in one row)."""
        self._meta()
        schema = self.meta.schema
        if schema is not None and schema != SCHEMA_VERSION:
            self.error = f"unsupported schema v{schema}"  # another gpumem's stream: not misread
            return
        if self.summary_read:
            return  # ended: every file was read to its end
        samples = self.by_step is None or not self.by_step(self)
        if samples != self.sampling:
            self._sample_from_now(samples)
        if samples:
            lines = self.samples.read_lines()
            if lines:
                self._samples(lines)
        for record in self.events_tail.read():
            self._event(record)
        if samples:
            self._modules()  # a rank read by its step ends shows no modules until focused
        summary_path = self.paths[SUMMARY]
        if os.path.lexists(summary_path):
            self.summary_read = True
            data = files.read_json(Path(summary_path))
            if data is None:
                self.bad_files += 1
                data = {"status": "unreadable", "end_time": files.mtime(summary_path)}
            self.summary = clean(data)
            self._peak(int_or_none(data.get("session_peak")))
            self.samples.close()
            self.events_tail.close()

    def _sample_from_now(self, samples: bool) -> None:
        """Start (the end of the file is read again: a fresh history) or stop reading samples."""
        self.sampling = samples
        self.samples.close()
        self.log = SampleLog(self.log.maxlen)
        self.latest, self.latest_time, self.latest_bytes = None, 0.0, None

    def _meta(self) -> None:
        meta_path = self.paths[META]
        mtime = files.mtime(meta_path)
        if mtime is not None and mtime != self.meta_mtime:
            self.meta_mtime = mtime
            data = files.read_json(Path(meta_path))
            if data is None:
                self.bad_files += 1
                self.error = "meta.json unreadable"
            else:
                self.meta = SessionMeta.from_dict(self.directory, data)
                self.error = None

    def _modules(self) -> None:
        modules_path = self.paths[MODULES]
        mtime = files.mtime(modules_path)
        if mtime is not None and mtime != self.modules_mtime:
            self.modules_mtime = mtime
            data = files.read_json(Path(modules_path))
            pairs = data.get("activations") if data is not None else None
            if isinstance(pairs, list):
                self.modules = tuple(
                    (printable(p[0], limit=500), int_or_none(p[1]) or 0)
                    for p in pairs[:100]
                    if isinstance(p, list) and len(p) == 2 and int_or_none(p[1]) is not None
                )

    def _peak(self, value: int | None) -> None:
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = value

    def _touch(self, t: float | None, step: int | None) -> None:
        if t is not None and (self.last_update is None or t > self.last_update):
            self.last_update = t
        if step is not None and (self.step is None or step > self.step):
            self.step = step

    def _samples(self, lines: list[bytes]) -> None:
        """Keep the lines for the history; parse only the latest sample (:mod:`.history`)."""
        self.log.add(lines)
        self._peak(highest_total(lines))
        found = latest_sample(lines)
        if found is not None:
            self.latest, point = found
            self.latest_time, self.latest_bytes = point.time, point.bytes
            self._touch(point.time, point.step)

    def _event(self, record: dict[str, Any]) -> None:
        if record.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
            self.events_tail.skipped += 1
            return
        t = float_or_none(record.get("t"))
        kind = str_or_none(record.get("kind"))
        if t is None or kind is None:
            self.events_tail.skipped += 1
            return
        step = int_or_none(record.get("step")) or 0
        data = record.get("data")
        data = data if isinstance(data, dict) else {}
        if kind == "step_end":
            point = _step_point(step, t, data)
            if point is None:
                self.events_tail.skipped += 1
                return
            if self.steps and self.steps[-1].step == step:
                self.steps[-1] = point
            else:
                self.steps.append(point)
            self._peak(max(point.peak, point.session_peak or 0))
        elif kind == "prediction":
            prediction = Prediction.from_event(t, step, data)
            if prediction is None:
                self.events_tail.skipped += 1
                return
            self.prediction = prediction
        else:
            message = printable(record.get("message") or "", limit=1000)
            self.events.append(SessionEvent(t, step, kind, message, clean(data)))
            self.events_seen += 1
        self._touch(t, step)

    def view(
        self,
        live: bool,
        end_time: float | None,
        status: str | None,
        summary: Mapping[str, Any] | None,
    ) -> SessionView:
        history = self.log.history()
        key = (live, end_time, status, history.upto, self.events_seen, self.step, self.peak,
               self.steps[-1] if self.steps else None, self.prediction, self.meta, self.modules,
               self.error, self.samples.skipped + self.events_tail.skipped + self.bad_files,
               self.summary is not None)  # fmt: skip
        if self.shown is not None and self.shown[0] == key:
            return self.shown[1]  # nothing changed since the last poll: the same view
        view = self._build_view(live, end_time, status, summary, history)
        self.shown = (key, view)
        return view

    def _build_view(
        self,
        live: bool,
        end_time: float | None,
        status: str | None,
        summary: Mapping[str, Any] | None,
        history: History,
    ) -> SessionView:
        latest = self.latest
        current = bytes_ = phase = module = allocator = nvml = None
        if latest is not None:
            current = int_or_none(latest.get("total"))
            bytes_ = self.latest_bytes
            phase = str_or_none(latest.get("phase"))
            module = str_or_none(latest.get("module"), 500)
            alloc = latest.get("allocator")
            allocator = alloc if isinstance(alloc, dict) else None
            nv = latest.get("nvml")
            nvml = nv if isinstance(nv, dict) else None
        if self.steps and (latest is None or self.steps[-1].time >= self.latest_time):
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
            history=history,
            steps=self._steps_tuple(),
            events=tuple(self.events),
            modules=self.modules,
            summary=summary,
            error=self.error,
            read_skipped=self.samples.skipped + self.events_tail.skipped + self.bad_files,
            prediction=self.prediction,
        )

    def _steps_tuple(self) -> tuple[StepPoint, ...]:
        """The step ends as a tuple, rebuilt only when one was added or replaced."""
        shown, steps = self.steps_shown, self.steps
        if len(shown) != len(steps) or (steps and shown[-1] is not steps[-1]):
            shown = self.steps_shown = tuple(steps)
        return shown

    def close(self) -> None:
        self.samples.close()
        self.events_tail.close()


def _step_point(step: int, t: float, data: Mapping[str, Any]) -> StepPoint | None:
    """A step end's record; ``None`` without a total."""
    total = int_or_none(data.get("total"))
    if total is None:
        return None
    peak_bytes = data.get("peak_bytes")
    return StepPoint(
        step,
        t,
        float_or_none(data.get("duration")),
        total,
        int_or_none(data.get("peak")) or total,
        bytes_tuple(data.get("bytes")),
        int_or_none(data.get("session_peak")),
        bytes_tuple(peak_bytes) if isinstance(peak_bytes, Mapping) else None,
    )


def _process_alive(pid: int, start_time: float | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``start_time`` (not a reuse)."""
    import psutil

    if pid <= 0:
        return False
    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    except Exception:
        return bool(psutil.pid_exists(pid))
    return start_time is None or created <= start_time + 2.0


def _directories(root: Path) -> list[str]:
    """The names of the real directories (not links to one) in ``root``; ``[]`` if unreadable."""
    names = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        names.append(entry.name)
                except OSError:
                    continue
    except (OSError, ValueError):
        return []
    return names


def _newest_mtime(directory: Path | str) -> float | None:
    newest = None
    base = os.fspath(directory)
    for name in (SAMPLES, EVENTS, META):
        mtime = files.mtime(os.path.join(base, name))
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
        ranks_by_step: read the ranks of a job (sessions with a job id) from their step ends
            only, not their samples, unless :meth:`focus` names the job or the rank: what
            ``gpumem top`` does, whose main screen shows a job as one row (its ranks' peaks,
            steps and step-end figures, at most a step behind the samples). A rank read that
            way has no history and no phase until it is focused (then the last 256 KiB of its
            samples are read at once).
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
        ranks_by_step: bool = False,
    ) -> None:
        self.root = sessions_dir(home, create=False)
        self.ranks_by_step = ranks_by_step
        self._focus: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self.home = self.root.parent
        self.history = history
        self.events = events
        self.ended_for = ended_for
        self.stale_after = stale_after
        self.clock = clock
        self.pid_exists = pid_exists
        self.host = host if host is not None else socket.gethostname()
        self._states: dict[str, _SessionState] = {}
        self._here = this_machine()
        self._ignored: set[str] = set()

    def focus(self, jobs: Iterable[str] = (), sessions: Iterable[str] = ()) -> None:
        """Read these jobs' ranks and these sessions in full (with ``ranks_by_step``)."""
        self._focus = (frozenset(jobs), frozenset(sessions))

    def _by_step(self, state: _SessionState) -> bool:
        """Whether ``state`` is a rank read from its step ends only (``ranks_by_step``)."""
        job_id = state.meta.job_id
        if not self.ranks_by_step or job_id is None:
            return False
        jobs, sessions = self._focus
        return job_id not in jobs and state.directory.name not in sessions

    def poll(self) -> list[SessionView]:
        """Read what changed and return every listed session: live ones first (by start time),
        then ended ones (most recently ended first)."""
        now = self.clock()
        names = _directories(self.root)
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
            try:
                skip, view = self._poll_one(name, now)
            except Exception as exc:  # noqa: BLE001 - one session's problem hides no other
                skip, view = False, self._broken(name, exc)
            if skip:
                continue
            if view is None:
                self._states.pop(name).close()
                self._ignored.add(name)
            elif view.live:
                live.append(view)
            else:
                ended.append(view)
        ended.sort(key=lambda v: -(v.end_time or 0.0))
        return live + ended

    def _poll_one(self, name: str, now: float) -> tuple[bool, SessionView | None]:
        """(skip, view) for one session directory; skip: it ended long before we first saw it."""
        state = self._states.get(name)
        if state is None:
            directory = self.root / name
            if self._long_ended(directory, now):
                self._ignored.add(name)
                return True, None
            state = _SessionState(directory, self.history, self.events)
            state.by_step = self._by_step
            self._states[name] = state
        state.update()
        return False, self._judge(state, now)

    def _broken(self, name: str, exc: Exception) -> SessionView:
        """A session whose files could not be read, shown in place with the reason."""
        state = self._states.get(name) or _SessionState(self.root / name, 1, 1)
        self._states[name] = state
        reason = printable(f"unreadable: {type(exc).__name__}: {exc}", limit=200)
        state.error = reason
        return state.view(False, None, "unreadable", None)

    def close(self) -> None:
        """Close every open file."""
        for state in self._states.values():
            state.close()
        self._states.clear()

    def _same_host(self, host: str | None) -> bool:
        return host_matches(host, self.host)

    def _long_ended(self, directory: Path, now: float) -> bool:
        """Whether a session found for the first time ended more than ``ended_for`` ago."""
        base = os.fspath(directory)
        summary_path = os.path.join(base, SUMMARY)
        summary_mtime = files.mtime(summary_path)
        if summary_mtime is not None:  # the writer puts end_time first: read the head only
            found = _END_TIME.search(files.read_head(summary_path, 256))
            end = float_or_none(float(found.group(1))) if found else None
            return now - (summary_mtime if end is None else end) > self.ended_for
        newest = _newest_mtime(base)
        if newest is None or now - newest <= self.ended_for:
            return False
        meta = SessionMeta.from_directory(directory)
        if self._same_host(meta.host) and meta.pid is not None:
            return not self._alive(meta.pid, meta.start_time)
        return True

    def _alive(self, pid: int, start_time: float | None) -> bool:
        if self.pid_exists is not None:
            return self.pid_exists(pid)
        return _process_alive(pid, start_time)

    def _pid_alive(self, state: _SessionState, now: float) -> bool:
        """Whether the session's process runs: its start time checked (pid reuse) once every
        :data:`_REVERIFY` seconds, a signal-0 probe (about a microsecond) in between."""
        pid = state.meta.pid
        if pid is None or pid <= 0:
            return False
        if self.pid_exists is not None:
            return self.pid_exists(pid)
        verified = state.verified_at
        if verified is not None and 0 <= now - verified < _REVERIFY:
            try:
                os.kill(pid, 0)
            except PermissionError:
                return True  # another user's process: it exists
            except OSError:
                state.verified_at = None
                return False
            return True
        alive = _process_alive(pid, state.meta.start_time)
        state.verified_at = now if alive else None
        return alive

    def _judge(self, state: _SessionState, now: float) -> SessionView | None:
        summary = state.summary
        if summary is not None:
            end = float_or_none(summary.get("end_time"))
            if end is None:
                end = files.mtime(state.directory / SUMMARY) or now
            status = str_or_none(summary.get("status")) or "ok"
            if now - end > self.ended_for:
                return None
            return state.view(
                False,
                end,
                status,
                summary.get("summary") if isinstance(summary.get("summary"), Mapping) else summary,
            )
        meta = state.meta
        if state.here is None or state.here[0] is not meta:
            identity = {"host": meta.host, "boot_id": meta.boot_id, "pid_ns": meta.pid_ns}
            state.here = (meta, same_machine(identity, self.host, self._here))
        if state.here[1]:  # its pid can be checked here
            alive = self._pid_alive(state, now)
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
