"""The session stream writer: one directory per tracked session under ``$GPUMEM_HOME``.

A :class:`SessionWriter` is an :class:`~profiler.run.Observer` of a run; it reads the run only
through :class:`~profiler.run.RunView`. It writes, into a directory that
:mod:`profiler.session.layout` names (``<home>/sessions/<start>-<host>-<pid>-<name>/``):

- ``meta.json`` (atomic): ``v``, ``name``, ``pid``, ``host``, ``rank``, ``local_rank``,
  ``world_size``, ``job_id`` (:mod:`profiler.ranks`: torch.distributed, else the launcher's
  environment, else null; rewritten when they change, say once the process group exists:
  looked at on the first two step ends, then at most once a second, and at the end),
  ``start_time`` (epoch s), ``command``,
  ``interval``, ``categories`` (the category order), ``device``, ``device_type``,
  ``device_index``, ``mode``, ``model_class``, ``param_count``, ``capacity`` (a simulated device's
  bytes), ``predicted`` (category → bytes or null);
- ``samples.jsonl``: one object a line: ``v``, ``t``, ``step``, ``phase``, ``module``, ``bytes``
  (category → bytes), ``total``, ``peak`` (true for a window's peak written beside the latest
  sample), ``allocator`` (allocated, reserved, active, inactive_split, peak_allocated,
  num_alloc_retries, num_ooms, or null) and ``nvml`` (process_used, device_used, device_total,
  device_index, or null);
- ``events.jsonl``: ``v``, ``t``, ``step``, ``kind`` (step_end, leak, leak_hunt, oom,
  suggestion, warning, prediction, start, end), ``message``, ``data``; a step end's data holds
  ``duration``, ``bytes``, ``total``, ``peak``, ``peak_bytes`` and ``session_peak``; a
  prediction's (written at entry, at the first step end and at exit, whenever the figures
  change) ``basis`` (entry, step, end or update), ``predicted`` (category → bytes or null),
  ``batch``, ``seq`` and ``training``: the newest one supersedes ``meta.json``'s
  ``predicted`` (which streams written before this event existed carry alone);
- ``modules.json`` (atomic, every few seconds): ``v``, ``t``, ``activations`` (the top modules
  as ``[[name, bytes], ...]``, :func:`profiler.views.top_modules`);
- ``summary.json`` (atomic, at the end): ``v``, ``end_time``, ``status`` (ok or error),
  ``error``, ``session_peak``, ``summary`` (:func:`profiler.views.summary`).

Every line and file carries ``"v": SCHEMA_VERSION``. Readers (:mod:`profiler.session.reader`)
skip a torn last line, corrupt lines and unknown fields. The two ``.jsonl`` files rotate at
``max_bytes`` (the old one becomes ``samples.1.jsonl``), so a session holds at most about
``4 * max_bytes`` on disk, and old ended sessions are pruned (the newest 64 kept) on a daemon
thread when a new one starts (never a session that may be live).

Overhead: a written sample costs about 10 µs of CPU (hand-built JSON, a buffered write); a
sample that arrives within ``interval`` of the last written one costs a comparison (< 1 µs). A
daemon thread writes the latest pending sample and flushes every ``interval``, so a process
killed with SIGKILL loses at most the last interval; every second the flusher also touches
``samples.jsonl`` (the heartbeat readers judge a session in another pid namespace by).
``meta.json`` records ``boot_id`` and ``pid_ns`` (:func:`~profiler.session.layout.this_machine`).
Every file is opened through the session directory's descriptor with ``O_NOFOLLOW`` (and
the directory is checked to be the user's own, mode 0700), so a symbolic link swapped in cannot
redirect a write. A write that fails (disk full, directory
removed) warns once and stops the stream; the tracked program carries on.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from profiler import views
from profiler.ranks import current_ranks
from profiler.records import Category, Event, EventKind, Sample, SessionInfo, StepRecord
from profiler.run import Observer, RunView
from profiler.session.atomic import write_atomic_at
from profiler.session.layout import (
    EVENTS,
    META,
    MODULES,
    SAMPLES,
    SUMMARY,
    make_private_dirs,
    make_session_dir,
    open_private_dir,
    prune_in_background,
    sessions_dir,
    this_machine,
)
from profiler.session.schema import (
    CATEGORY_NAMES,
    SCHEMA_VERSION,
    dumps,
    event_line,
    module_json,
    sample_line,
    step_line,
)

__all__ = ["DEFAULT_MAX_BYTES", "SCHEMA_VERSION", "SessionWriter"]

#: Seconds between two heartbeats (the flusher touches ``samples.jsonl``; readers judge a
#: session in another pid namespace or on another host live while its files stay fresh).
HEARTBEAT = 1.0

#: Seconds between two looks at the run's facts for ``meta.json`` after the first steps.
META_INTERVAL = 1.0

#: Default largest size of one ``.jsonl`` file before it rotates.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024


def _default_name() -> str:
    """The running script's name (``train`` for ``python train.py``), else ``python``."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    stem = Path(argv0).stem
    return stem if stem and stem not in ("-c", "-m", "__main__") else "python"


def _run_meta(info: SessionInfo, predicted: Mapping[Category, int | None]) -> dict[str, Any]:
    """The metadata fields a run tells: device, mode, model, capacity, predictions."""
    meta: dict[str, Any] = {
        "device": info.device,
        "device_type": info.device_type,
        "device_index": info.device_index,
    }
    for key, value in (
        ("mode", info.mode),
        ("model_class", info.model_class),
        ("param_count", info.param_count),
        ("capacity", info.capacity),
    ):
        if value is not None:
            meta[key] = value
    meta["predicted"] = {str(k): (None if v is None else int(v)) for k, v in predicted.items()}
    meta.update(
        rank=info.rank, local_rank=info.local_rank, world_size=info.world_size, job_id=info.job_id
    )
    return meta


def _process_meta(name: str, pid: int, host: str, start: float, interval: float) -> dict[str, Any]:
    """The metadata fields the process tells: who, where, when, the command line."""
    return {
        "name": name,
        "pid": pid,
        "host": host,
        **current_ranks().as_meta(),
        "start_time": start,
        **this_machine(),
        "command": shlex.join(sys.argv) if sys.argv else None,
        "interval": float(interval),
    }


def _new_session_dir(
    home: str | os.PathLike[str] | None,
    start: float,
    host: str,
    pid: int,
    name: str,
    *,
    prune: bool,
) -> Path:
    """A new session directory under ``home``'s sessions folder, old sessions pruned first."""
    root = sessions_dir(home)
    directory = make_session_dir(root, start, host, pid, name)
    if prune:  # housekeeping, on a daemon thread: never delays or fails a session
        prune_in_background(root.parent)
    return directory


def _status(exc: BaseException | None) -> str:
    """How a session ended: ``ok``, ``interrupted`` (Ctrl-C, SIGTERM's SystemExit) or ``error``."""
    if exc is None:
        return "ok"
    return "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "error"


def _end_payload(
    run: RunView | None, exc: BaseException | None, end_time: float, session_peak: int
) -> dict[str, Any]:
    """What ``summary.json`` holds: how the session ended and :func:`profiler.views.summary`."""
    summary: Any = None
    if run is not None:
        try:
            summary = views.summary(run)
        except Exception as error:  # a summary that fails still ends the session
            summary = {"error": f"summary failed: {error!r}"}
    return {
        "v": SCHEMA_VERSION,
        "end_time": end_time,
        "status": _status(exc),
        "error": None if exc is None else f"{type(exc).__name__}: {exc}",
        "session_peak": session_peak,
        "summary": summary,
    }


class SessionWriter(Observer):
    """Writes one session's stream; an observer of the run (``on_start`` ... ``on_close``).

    Thread-safe: hooks may call it from autograd threads while the flusher thread runs.

    Args:
        directory: the session directory (created with mode 0700 if missing).
        meta: the session metadata (``name``, ``pid``, ``host``, ...), written to ``meta.json``.
        interval: the shortest time between two written samples, and the flush period (s).
        max_bytes: the size at which a ``.jsonl`` file rotates.
        modules_interval: the shortest time between two ``modules.json`` rewrites (s).
        flush_thread: start the daemon thread that flushes every ``interval``.
        clock: the wall clock for the end time and the flusher (tests freeze it).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        meta: Mapping[str, Any],
        *,
        interval: float = 0.1,
        max_bytes: int = DEFAULT_MAX_BYTES,
        modules_interval: float = 5.0,
        flush_thread: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self._directory = Path(directory)
        make_private_dirs(self._directory)
        self._dir_fd = open_private_dir(self._directory)
        self.interval = float(interval)
        self.max_bytes = int(max_bytes)
        self.modules_interval = float(modules_interval)
        self._meta: dict[str, Any] = {"v": SCHEMA_VERSION, **meta}
        self._meta.setdefault("categories", list(CATEGORY_NAMES))
        self._lock = threading.Lock()
        self._closed = False
        self._failed = False
        try:
            self._samples = _RotatingFile(self._dir_fd, SAMPLES, self.max_bytes)
            self._events = _RotatingFile(self._dir_fd, EVENTS, self.max_bytes)
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._heartbeat_at = float("-inf")
        self._last_written_time = float("-inf")
        self._pending: Sample | None = None
        self._window_peak: Sample | None = None
        self._session_peak = 0
        self._modules_written_at = float("-inf")
        self._meta_checked_at = float("-inf")
        self._meta_steps = 0
        self._run: RunView | None = None
        self._module_cache: dict[str | None, str] = {None: "null"}
        self._write_file(META, self._meta)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if flush_thread:
            self._thread = threading.Thread(
                target=self._flush_loop, name="gpumem-stream", daemon=True
            )
            self._thread.start()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        home: str | os.PathLike[str] | None = None,
        name: str | None = None,
        start_time: float | None = None,
        pid: int | None = None,
        host: str | None = None,
        prune: bool = True,
        interval: float = 0.1,
        max_bytes: int = DEFAULT_MAX_BYTES,
        flush_thread: bool = True,
        clock: Callable[[], float] = time.time,
        **meta: Any,
    ) -> SessionWriter:
        """A writer in a new, uniquely named session directory under ``home``.

        The directory is named by :func:`~profiler.session.layout.make_session_dir`: unique and
        sorted by start time. Extra keyword arguments go into ``meta.json``.
        """
        start = clock() if start_time is None else float(start_time)
        pid = os.getpid() if pid is None else int(pid)
        host = socket.gethostname() if host is None else host
        name = name or _default_name()
        directory = _new_session_dir(home, start, host, pid, name, prune=prune)
        full_meta = _process_meta(name, pid, host, start, interval)
        full_meta.update(meta)
        return cls(
            directory,
            full_meta,
            interval=interval,
            max_bytes=max_bytes,
            flush_thread=flush_thread,
            clock=clock,
        )

    @classmethod
    def for_run(
        cls,
        run: RunView,
        *,
        home: str | os.PathLike[str] | None = None,
        interval: float = 0.1,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> SessionWriter:
        """A writer for ``run``, named after ``run.info`` (name, start time).

        Args:
            run: the run; only :class:`~profiler.run.RunView` members are read (``info`` and
                ``predicted`` now, the rest while it runs and at its end).
            home: the gpumem home; ``run.info.home``, else ``$GPUMEM_HOME`` etc., when ``None``.
            interval, max_bytes: as for :class:`SessionWriter`.
        """
        info = run.info
        writer = cls.create(
            home=home if home is not None else info.home,
            name=info.name,
            start_time=info.start_time,
            interval=interval,
            max_bytes=max_bytes,
            **_run_meta(info, run.predicted),
        )
        writer._run = run
        return writer

    @property
    def directory(self) -> Path:
        """The session directory."""
        return self._directory

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of the metadata as written to ``meta.json``."""
        return dict(self._meta)

    # -- observer interface -------------------------------------------------------------------

    def on_start(self, run: RunView) -> None:
        """Refresh the metadata with what the run knows once started."""
        self._run = run
        self.update_meta(**_run_meta(run.info, run.predicted))

    def update_meta(self, **fields: Any) -> None:
        """Merge ``fields`` into the metadata and rewrite ``meta.json`` if anything changed."""
        changed = {k: v for k, v in fields.items() if self._meta.get(k) != v}
        if not changed or self._failed:
            return
        with self._lock:
            self._meta.update(changed)
            self._write_file(META, self._meta)

    def on_sample(self, sample: Sample) -> None:
        """Keep ``sample``; write it if ``interval`` has passed since the last written one."""
        if self._closed:
            return
        with self._lock:
            total = sample.total
            if total > self._session_peak:
                self._session_peak = total
            peak = self._window_peak
            if peak is None or total > peak.total:
                self._window_peak = sample
            if sample.time - self._last_written_time >= self.interval:
                self._write_window(sample)
            else:
                self._pending = sample

    def on_step(self, record: StepRecord) -> None:
        """Write a step end (every one, not rate-limited) to ``events.jsonl``."""
        if self._closed:
            return
        with self._lock:
            if record.peak > self._session_peak:
                self._session_peak = record.peak
            self._write(self._events, step_line(record, self._session_peak))
            if self._pending is not None:
                self._write_window(self._pending)
        if record.time - self._modules_written_at >= self.modules_interval:
            self._modules_written_at = record.time
            self._write_modules()
        # the process group may appear after tracking started (Lightning's fit() creates it),
        # and the predictions are made once the first step has shown the batch: looked at on
        # the first steps, then at most once per META_INTERVAL (reading the run's facts and the
        # ranks costs ~15 us), and at the end
        run = self._run
        self._meta_steps += 1
        if run is not None and (
            self._meta_steps <= 2 or record.time - self._meta_checked_at >= META_INTERVAL
        ):
            self._meta_checked_at = record.time
            self.update_meta(**_run_meta(run.info, run.predicted))

    def on_event(self, event: Event) -> None:
        """Write ``event`` to ``events.jsonl``.

        Step-end events are left out: :meth:`on_step` writes every step end, with its bytes.
        """
        if self._closed or event.kind == EventKind.STEP_END:
            return
        line = event_line(event)
        with self._lock:
            self._write(self._events, line)

    def on_close(self, run: RunView | None = None, exc: BaseException | None = None) -> None:
        """Write the last sample, the modules and ``summary.json``; close the files."""
        if self._closed:
            return
        run = run if run is not None else self._run
        payload: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "end_time": self.clock(),
            "status": "interrupted",  # what stays if an interrupt lands in here
            "error": None,
            "session_peak": self._session_peak,
            "summary": None,
        }
        try:
            with self._lock:
                if self._pending is not None:
                    self._write_window(self._pending)
            if run is not None:
                self.update_meta(**_run_meta(run.info, run.predicted))
                self._write_modules(run)
            payload = _end_payload(run, exc, self.clock(), self._session_peak)
        finally:  # the thread stops and the summary is written, interrupted or not
            try:
                self._stop_streams()
            finally:
                self._write_file(SUMMARY, payload)
                self._release_directory()

    def close(self) -> None:
        """Stop the flusher thread and close the files (no summary; see :meth:`on_close`)."""
        self._stop_streams()
        self._release_directory()

    def _release_directory(self) -> None:
        fd, self._dir_fd = self._dir_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _stop_streams(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        with self._lock:
            self._sync_files(close=True)

    def flush(self) -> None:
        """Write the pending sample and push buffered lines to the operating system."""
        with self._lock:
            if self._pending is not None:
                self._write_window(self._pending)
            self._sync_files()

    # -- internals ----------------------------------------------------------------------------

    def _write_window(self, latest: Sample) -> None:
        """Write the window's peak (if higher than ``latest``) and ``latest``; lock held."""
        peak = self._window_peak
        cache = self._module_cache
        if peak is not None and peak is not latest and peak.total > latest.total:
            self._write(self._samples, sample_line(peak, True, module_json(cache, peak.module)))
        self._write(self._samples, sample_line(latest, False, module_json(cache, latest.module)))
        self._last_written_time = latest.time
        self._pending = None
        self._window_peak = None

    def _write(self, handle: _RotatingFile, line: str) -> None:
        if self._failed:
            return
        try:
            handle.write(line)
        except (OSError, ValueError) as error:
            self._fail(error)

    def _write_file(self, name: str, payload: Mapping[str, Any]) -> None:
        """Write ``payload`` atomically as the session file ``name`` (stops the stream on error)."""
        if self._failed:
            return
        try:
            write_atomic_at(self._dir_fd, name, dumps(payload).encode("utf-8"))
        except (OSError, ValueError) as error:
            self._fail(error)

    def _write_modules(self, run: RunView | None = None) -> None:
        run = run if run is not None else self._run
        if run is None or self._failed:
            return
        try:
            top = [[name, value] for name, value in views.top_modules(run, 10)]
        except Exception:  # the list is a convenience; the stream goes on without it
            return
        self._write_file(MODULES, {"v": SCHEMA_VERSION, "t": self.clock(), "activations": top})

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._closed:
                    return
                pending = self._pending
                now = self.clock()
                if pending is not None and now - pending.time >= self.interval:
                    self._write_window(pending)
                self._sync_files()
                if now - self._heartbeat_at >= HEARTBEAT:
                    self._heartbeat_at = now
                    self._samples.touch()

    def _sync_files(self, *, close: bool = False) -> None:
        """Flush (or close) both ``.jsonl`` files; lock held. A failure stops the stream."""
        for handle in (self._samples, self._events):
            try:
                if close:
                    handle.close()
                else:
                    handle.flush()
            except (OSError, ValueError) as error:
                self._fail(error)

    def _fail(self, error: BaseException) -> None:
        if self._failed:
            return
        self._failed = True
        warnings.warn(
            f"gpumem: the session stream in {self._directory} stopped: {error}",
            RuntimeWarning,
            stacklevel=2,
        )


class _RotatingFile:
    """An append-only text file that is renamed to ``<stem>.1.jsonl`` when it passes a size.

    Opened and renamed through the session directory's descriptor with ``O_NOFOLLOW``: a
    symbolic link put in its place is never followed.
    """

    def __init__(self, dir_fd: int, name: str, max_bytes: int) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.max_bytes = max_bytes
        self._handle: IO[str] | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.name, flags, 0o600, dir_fd=self.dir_fd)
        self._handle = os.fdopen(fd, "a", encoding="utf-8", buffering=64 * 1024)
        self._size = self._handle.tell()

    def touch(self) -> None:
        """The heartbeat: set the file's modification time to now (readers judge liveness)."""
        if self._handle is not None:
            with contextlib.suppress(OSError, ValueError):
                os.utime(self._handle.fileno())

    def write(self, line: str) -> None:
        handle = self._handle
        if handle is None:
            raise ValueError("closed")
        handle.write(line)
        self._size += len(line)
        if self._size >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        """Close this file, rename it to ``<stem>.1.jsonl`` (replacing the older one), reopen."""
        if self._handle is not None:
            self._handle.close()
        stem = self.name.removesuffix(".jsonl")
        os.replace(self.name, f"{stem}.1.jsonl", src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self._open()

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
