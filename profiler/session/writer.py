"""The session stream writer: one directory per tracked session under ``$GPUMEM_HOME``.

A :class:`SessionWriter` is an observer of a tracker. It writes, into
``$GPUMEM_HOME/sessions/<YYYYmmddTHHMMSS.ffffff>-<host>-<pid>-<name>/`` (UTC start time; the
directory names sort by start; ``-`` never appears inside a field):

- ``meta.json`` (atomic): ``v``, ``name``, ``pid``, ``host``, ``rank``, ``world_size`` (when
  torch.distributed is initialised, else null), ``start_time`` (epoch s), ``command``,
  ``interval``, ``categories`` (the category order), ``device``, ``device_type``,
  ``device_index``, ``mode``, ``model_class``, ``param_count``, ``capacity`` (a simulated device's
  bytes), ``predicted`` (category → bytes or null);
- ``samples.jsonl``: one object a line: ``v``, ``t``, ``step``, ``phase``, ``module``, ``bytes``
  (category → bytes), ``total``, ``peak`` (true for a window's peak written beside the latest
  sample), ``allocator`` (allocated, reserved, active, inactive_split, peak_allocated,
  num_alloc_retries, num_ooms, or null) and ``nvml`` (process_used, device_used, device_total,
  device_index, or null);
- ``events.jsonl``: ``v``, ``t``, ``step``, ``kind`` (step_end, leak, leak_hunt, oom,
  suggestion, warning, start, end), ``message``, ``data``; a step end's data holds
  ``duration``, ``bytes``, ``total``, ``peak``, ``peak_bytes`` and ``session_peak``;
- ``modules.json`` (atomic, every few seconds): ``v``, ``t``, ``activations`` (the top modules
  as ``[[name, bytes], ...]``);
- ``summary.json`` (atomic, at the end): ``v``, ``end_time``, ``status`` (ok or error),
  ``error``, ``session_peak``, ``summary`` (the tracker's ``summary()``).

Every line and file carries ``"v": SCHEMA_VERSION``. Readers (:mod:`profiler.sessions`) skip a
torn last line, corrupt lines and unknown fields. The two ``.jsonl`` files rotate at
``max_bytes`` (the old one becomes ``samples.1.jsonl``), so a session holds at most about
``4 * max_bytes`` on disk, and old ended sessions are pruned (the newest 64 kept) when a new one
starts.

Overhead: a written sample costs about 10 µs of CPU (hand-built JSON, a buffered write); a
sample that arrives within ``interval`` of the last written one costs a comparison (< 1 µs). A
daemon thread writes the latest pending sample and flushes every ``interval``, so a process
killed with SIGKILL loses at most the last interval. A write that fails (disk full, directory
removed) warns once and stops the stream; the tracked program carries on.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from profiler.records import (
    CATEGORIES,
    AllocatorReading,
    Event,
    EventKind,
    NvmlReading,
    Phase,
    Sample,
)

__all__ = [
    "SCHEMA_VERSION",
    "SessionWriter",
    "gpumem_home",
    "sessions_dir",
    "write_json_atomic",
]

#: Version of every stream file; bumped only for changes old readers would misread.
SCHEMA_VERSION = 1

#: Default largest size of one ``.jsonl`` file before it rotates.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024

_CATEGORY_NAMES = tuple(str(c) for c in CATEGORIES)
_PHASES = {phase: phase.value for phase in Phase}
_ALLOCATOR_FIELDS = AllocatorReading.__slots__
_NVML_FIELDS = NvmlReading.__slots__


def gpumem_home(home: str | os.PathLike[str] | None = None, *, create: bool = True) -> Path:
    """The per-user gpumem directory, created with mode 0700 when ``create``.

    ``home`` if given, else ``$GPUMEM_HOME``, else ``$XDG_CACHE_HOME/gpumem``, else
    ``~/.cache/gpumem``.
    """
    if home is not None:
        path = Path(home)
    elif os.environ.get("GPUMEM_HOME"):
        path = Path(os.environ["GPUMEM_HOME"])
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]) / "gpumem"
    else:
        path = Path.home() / ".cache" / "gpumem"
    path = path.expanduser()
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def sessions_dir(home: str | os.PathLike[str] | None = None, *, create: bool = True) -> Path:
    """The folder holding one directory per session (``<home>/sessions``)."""
    path = gpumem_home(home, create=create) / "sessions"
    if create:
        path.mkdir(mode=0o700, exist_ok=True)
    return path


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (a temporary file, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, default=_jsonable, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    """A JSON stand-in for values ``json`` cannot write (tuples of records, enums, paths)."""
    if hasattr(value, "__slots__") and hasattr(value, "__dataclass_fields__"):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _safe_name(name: str) -> str:
    """``name`` reduced to characters safe in a directory name (no ``-``: it separates fields)."""
    cleaned = "".join(c if c.isalnum() or c in "._" else "_" for c in name).strip("._")
    return cleaned[:48] or "session"


def _default_name() -> str:
    """The running script's name (``train`` for ``python train.py``), else ``python``."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    stem = Path(argv0).stem
    return stem if stem and stem not in ("-c", "-m", "__main__") else "python"


def _distributed() -> tuple[int | None, int | None]:
    """(rank, world size) when torch.distributed is initialised, else (None, None)."""
    dist_module = sys.modules.get("torch.distributed")
    if dist_module is None:
        return None, None
    try:
        if dist_module.is_available() and dist_module.is_initialized():
            return int(dist_module.get_rank()), int(dist_module.get_world_size())
    except Exception:
        pass
    return None, None


def _object_format(fields: tuple[str, ...]) -> str:
    """A %-format string for a JSON object with ``fields``, each value rendered by ``%s``."""
    return "{" + ",".join(f'"{name}":%s' for name in fields) + "}"


_BYTES_FORMAT = "{" + ",".join(f'"{name}":%s' for name in _CATEGORY_NAMES) + "}"
_ALLOCATOR_FORMAT = _object_format(_ALLOCATOR_FIELDS)
_NVML_FORMAT = _object_format(_NVML_FIELDS)
_ALLOCATOR_GET = operator.attrgetter(*_ALLOCATOR_FIELDS)
_NVML_GET = operator.attrgetter(*_NVML_FIELDS)


def _reading(value: Any, fmt: str, get: Callable[[Any], tuple[Any, ...]]) -> str:
    """A reading record (numbers or ``None``) as compact JSON, or ``null``."""
    if value is None:
        return "null"
    return (fmt % get(value)).replace("None", "null")


class SessionWriter:
    """Writes one session's stream; a tracker observer (``on_start`` ... ``on_close``).

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
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.interval = float(interval)
        self.max_bytes = int(max_bytes)
        self.modules_interval = float(modules_interval)
        self._meta: dict[str, Any] = {"v": SCHEMA_VERSION, **meta}
        self._meta.setdefault("categories", list(_CATEGORY_NAMES))
        self._lock = threading.Lock()
        self._closed = False
        self._failed = False
        self._samples = _RotatingFile(self._directory / "samples.jsonl", self.max_bytes)
        self._events = _RotatingFile(self._directory / "events.jsonl", self.max_bytes)
        self._last_written_time = float("-inf")
        self._pending: Sample | None = None
        self._window_peak: Sample | None = None
        self._session_peak = 0
        self._last_step_written = -1
        self._modules_written_at = float("-inf")
        self._tracker: Any = None
        self._module_cache: dict[str | None, str] = {None: "null"}
        self._write_meta()
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

        The directory is ``<home>/sessions/<YYYYmmddTHHMMSS.ffffff>-<host>-<pid>-<name>``: unique
        and sorted by start time. Extra keyword arguments go into ``meta.json``.
        """
        start = clock() if start_time is None else float(start_time)
        pid = os.getpid() if pid is None else int(pid)
        host = socket.gethostname() if host is None else host
        name = name or _default_name()
        root = sessions_dir(home)
        if prune:
            try:
                from profiler.sessions import prune_sessions

                prune_sessions(root.parent)
            except Exception:  # pruning is housekeeping; never fail a session over it
                pass
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(start)) + f".{int(start % 1 * 1e6):06d}"
        base = f"{stamp}-{_safe_name(host)}-{pid}-{_safe_name(name)}"
        directory = root / base
        suffix = 1
        while True:
            try:
                directory.mkdir(mode=0o700)
                break
            except FileExistsError:
                suffix += 1
                directory = root / f"{base}-{suffix}"
        rank, world_size = _distributed()
        full_meta: dict[str, Any] = {
            "name": name,
            "pid": pid,
            "host": host,
            "rank": rank,
            "world_size": world_size,
            "start_time": start,
            "command": shlex.join(sys.argv) if sys.argv else None,
            "interval": float(interval),
        }
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
    def for_tracker(
        cls,
        tracker: Any,
        *,
        home: str | os.PathLike[str] | None = None,
        interval: float = 0.1,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> SessionWriter:
        """A writer for ``tracker`` (a :class:`~profiler.tracker.MemoryTracker`)."""
        writer = cls.create(
            home=home,
            name=getattr(tracker, "name", None),
            start_time=getattr(tracker, "start_time", None),
            interval=interval,
            max_bytes=max_bytes,
            **_tracker_meta(tracker),
        )
        writer._tracker = tracker
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

    def on_start(self, tracker: Any) -> None:
        """Refresh the metadata with what the tracker knows once started."""
        self._tracker = tracker
        self.update_meta(**_tracker_meta(tracker))

    def update_meta(self, **fields: Any) -> None:
        """Merge ``fields`` into the metadata and rewrite ``meta.json`` if anything changed."""
        changed = {k: v for k, v in fields.items() if self._meta.get(k) != v}
        if not changed or self._failed:
            return
        with self._lock:
            self._meta.update(changed)
            self._write_meta()

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

    def on_step(self, record: Any) -> None:
        """Write a step end (every one, not rate-limited) to ``events.jsonl``."""
        if self._closed:
            return
        with self._lock:
            if record.peak > self._session_peak:
                self._session_peak = record.peak
            line = (
                f'{{"v":{SCHEMA_VERSION},"t":{record.time!r},"step":{int(record.step)},'
                f'"kind":"step_end","message":"","data":{{"duration":{float(record.duration)!r},'
                f'"bytes":{_bytes_json(record.bytes)},"total":{int(record.total)},'
                f'"peak":{int(record.peak)},"peak_bytes":{_bytes_json(record.peak_bytes)},'
                f'"session_peak":{self._session_peak}}}}}\n'
            )
            self._write(self._events, line)
            if self._pending is not None:
                self._write_window(self._pending)
        if record.time - self._modules_written_at >= self.modules_interval:
            self._modules_written_at = record.time
            self._write_modules()

    def on_event(self, event: Event) -> None:
        """Write ``event`` to ``events.jsonl``.

        Step-end events are left out: :meth:`on_step` writes every step end, with its bytes.
        """
        if self._closed or event.kind == EventKind.STEP_END:
            return
        payload = {
            "v": SCHEMA_VERSION,
            "t": event.time,
            "step": event.step,
            "kind": str(event.kind),
            "message": event.message,
            "data": dict(event.data),
        }
        try:
            line = json.dumps(payload, default=_jsonable, separators=(",", ":")) + "\n"
        except (TypeError, ValueError):
            payload["data"] = {k: str(v) for k, v in event.data.items()}
            line = json.dumps(payload, separators=(",", ":")) + "\n"
        with self._lock:
            self._write(self._events, line)

    def on_close(self, tracker: Any = None, exc: BaseException | None = None) -> None:
        """Write the last sample, the modules and ``summary.json``; close the files."""
        if self._closed:
            return
        tracker = tracker if tracker is not None else self._tracker
        with self._lock:
            if self._pending is not None:
                self._write_window(self._pending)
        if tracker is not None:
            self._write_modules(tracker)
        summary: Any = None
        if tracker is not None and hasattr(tracker, "summary"):
            try:
                summary = tracker.summary()
            except Exception as error:  # a summary that fails still ends the session
                summary = {"error": f"summary failed: {error!r}"}
        payload = {
            "v": SCHEMA_VERSION,
            "end_time": self.clock(),
            "status": "ok" if exc is None else "error",
            "error": None if exc is None else f"{type(exc).__name__}: {exc}",
            "session_peak": self._session_peak,
            "summary": summary,
        }
        self.close()
        if not self._failed:
            try:
                write_json_atomic(self._directory / "summary.json", payload)
            except OSError as error:
                self._fail(error)

    def close(self) -> None:
        """Stop the flusher thread and close the files (no summary; see :meth:`on_close`)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        with self._lock:
            for handle in (self._samples, self._events):
                try:
                    handle.close()
                except OSError as error:
                    self._fail(error)

    def flush(self) -> None:
        """Write the pending sample and push buffered lines to the operating system."""
        with self._lock:
            if self._pending is not None:
                self._write_window(self._pending)
            for handle in (self._samples, self._events):
                try:
                    handle.flush()
                except OSError as error:
                    self._fail(error)

    # -- internals ----------------------------------------------------------------------------

    def _write_window(self, latest: Sample) -> None:
        """Write the window's peak (if higher than ``latest``) and ``latest``; lock held."""
        peak = self._window_peak
        if peak is not None and peak is not latest and peak.total > latest.total:
            self._write(self._samples, self._sample_line(peak, True))
        self._write(self._samples, self._sample_line(latest, False))
        self._last_written_time = latest.time
        self._pending = None
        self._window_peak = None

    def _sample_line(self, sample: Sample, is_peak: bool) -> str:
        module = self._module_cache.get(sample.module)
        if module is None:
            module = json.dumps(sample.module)
            if len(self._module_cache) < 4096:
                self._module_cache[sample.module] = module
        return (
            f'{{"v":{SCHEMA_VERSION},"t":{sample.time!r},"step":{int(sample.step)},'
            f'"phase":"{_PHASES.get(sample.phase) or sample.phase}","module":{module},'
            f'"bytes":{_bytes_json(sample.bytes)},'
            f'"total":{int(sample.total)},"peak":{"true" if is_peak else "false"},'
            f'"allocator":{_reading(sample.allocator, _ALLOCATOR_FORMAT, _ALLOCATOR_GET)},'
            f'"nvml":{_reading(sample.nvml, _NVML_FORMAT, _NVML_GET)}}}\n'
        )

    def _write(self, handle: _RotatingFile, line: str) -> None:
        if self._failed:
            return
        try:
            handle.write(line)
        except (OSError, ValueError) as error:
            self._fail(error)

    def _write_meta(self) -> None:
        try:
            write_json_atomic(self._directory / "meta.json", self._meta)
        except OSError as error:
            self._fail(error)

    def _write_modules(self, tracker: Any = None) -> None:
        tracker = tracker if tracker is not None else self._tracker
        if tracker is None or self._failed:
            return
        try:
            top = _top_modules(tracker)
        except Exception:
            return
        if top is None:
            return
        try:
            write_json_atomic(
                self._directory / "modules.json",
                {"v": SCHEMA_VERSION, "t": self.clock(), "activations": top},
            )
        except OSError as error:
            self._fail(error)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._closed:
                    return
                pending = self._pending
                if pending is not None and self.clock() - pending.time >= self.interval:
                    self._write_window(pending)
                for handle in (self._samples, self._events):
                    try:
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


def _bytes_json(values: tuple[int, ...]) -> str:
    """Per-category bytes as a JSON object keyed by category name."""
    if len(values) == len(_CATEGORY_NAMES):
        return _BYTES_FORMAT % values
    return (
        "{"
        + ",".join(f'"{n}":{int(v)}' for n, v in zip(_CATEGORY_NAMES, values, strict=False))
        + "}"
    )


def _tracker_meta(tracker: Any) -> dict[str, Any]:
    """The metadata fields a tracker can tell: device, model, mode, predictions, capacity."""
    meta: dict[str, Any] = {}
    device = getattr(tracker, "device", None)
    if device is not None:
        meta["device"] = str(device)
        meta["device_type"] = getattr(device, "type", None)
        meta["device_index"] = getattr(device, "index", None)
    for key in ("mode", "model_class", "param_count", "capacity"):
        value = getattr(tracker, key, None)
        if value is not None:
            meta[key] = value if isinstance(value, int | float | str) else str(value)
    predicted = getattr(tracker, "predicted", None)
    if isinstance(predicted, Mapping):
        meta["predicted"] = {str(k): (None if v is None else int(v)) for k, v in predicted.items()}
    return meta


def _top_modules(tracker: Any, limit: int = 10) -> list[list[Any]] | None:
    """The ``limit`` modules holding the most activation bytes, as ``[[name, bytes], ...]``.

    Asks ``tracker.top_modules(limit)`` where the tracker has it; else reads the tracker's
    per-module counters; else its ``modules()`` DataFrame, but only when pandas is already
    imported (importing it would stall the training loop for a second).
    """
    top = getattr(tracker, "top_modules", None)
    if callable(top):
        return [[str(name), int(value)] for name, value in top(limit)]
    stats = getattr(tracker, "_module_stats", None)
    pairs: list[tuple[str, int]]
    if isinstance(stats, Mapping):
        pairs = [(str(name), int(max(s[1], s[2]))) for name, s in list(stats.items())]
    elif "pandas" in sys.modules and hasattr(tracker, "modules"):
        frame = tracker.modules()
        if frame is None or "activations" not in frame.columns:
            return None
        names = frame["module"] if "module" in frame.columns else frame.index
        pairs = [
            (str(name), int(value))
            for name, value in zip(names, frame["activations"], strict=False)
            if value == value  # not NaN
        ]
    else:
        return None
    pairs = [pair for pair in pairs if pair[1] > 0]
    pairs.sort(key=lambda pair: (-pair[1], pair[0]))
    return [[name, value] for name, value in pairs[:limit]]


class _RotatingFile:
    """An append-only text file that is renamed to ``<stem>.1.jsonl`` when it passes a size."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._handle: IO[str] | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._handle = open(self.path, "a", encoding="utf-8", buffering=64 * 1024)  # noqa: SIM115
        self._size = self._handle.tell()

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
        os.replace(self.path, self.path.with_name(self.path.stem + ".1.jsonl"))
        self._open()

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
