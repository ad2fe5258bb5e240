"""Where sessions live on disk: the home, the sessions folder, the directory names, pruning.

The one owner of the on-disk layout both the writer and the reader follow::

    $GPUMEM_HOME/                      (or $XDG_CACHE_HOME/gpumem, else ~/.cache/gpumem; 0700)
      sessions/                        (0700)
        <YYYYmmddTHHMMSS.ffffff>-<host>-<pid>-<name>[-N]/
          meta.json  samples.jsonl  events.jsonl  modules.json  summary.json

A session directory's name is written by :func:`make_session_dir` and parsed by
:func:`parse_session_name`, both here: the UTC start time (so names sort by start), the host and
the session name reduced by :func:`safe_name` (``-`` never appears inside a field), the pid, and a
``-N`` suffix when two sessions start in the same microsecond. Plain files only: no torch.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.errors import StreamError, UsageError
from profiler.session.files import read_json
from profiler.text import printable

__all__ = [
    "EVENTS",
    "META",
    "MODULES",
    "SAMPLES",
    "SUMMARY",
    "SessionName",
    "format_session_name",
    "gpumem_home",
    "check_private_dir",
    "host_matches",
    "make_private_dirs",
    "make_session_dir",
    "open_private_dir",
    "prune_in_background",
    "same_machine",
    "this_machine",
    "parse_session_name",
    "prune_sessions",
    "safe_name",
    "sessions_dir",
]

#: The files of one session directory.
META = "meta.json"
SAMPLES = "samples.jsonl"
EVENTS = "events.jsonl"
MODULES = "modules.json"
SUMMARY = "summary.json"

_STAMP = "%Y%m%dT%H%M%S"


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
    try:
        path = path.expanduser()
    except RuntimeError:  # ~nosuchuser
        raise UsageError(
            f"cannot find the home directory in {printable(path, limit=200)!r}",
            hint="give GPUMEM_HOME (or --home) as an absolute path",
        ) from None
    if create:
        make_private_dirs(path)
    check_private_dir(path)
    return path


def sessions_dir(home: str | os.PathLike[str] | None = None, *, create: bool = True) -> Path:
    """The folder holding one directory per session (``<home>/sessions``)."""
    path = gpumem_home(home, create=create) / "sessions"
    if create:
        make_private_dirs(path)
    check_private_dir(path)
    return path


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and each missing parent with mode 0700 (whatever the umask says)."""
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)  # mkdir's mode passes through the umask


def check_private_dir(path: Path) -> None:
    """Refuse a gpumem home (or sessions folder) that another local user could tamper with.

    Like ssh with ``~/.ssh``: an existing directory owned by another user, or writable by its
    group or by everyone, is refused (a missing one is fine: nothing is read from it).

    Raises:
        StreamError: ``path`` is not a directory, is not ours, or is group/world-writable.
    """
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise StreamError(f"cannot use gpumem home {printable(path, limit=200)}: {exc}") from None
    shown = printable(path, limit=200)
    if not stat.S_ISDIR(found.st_mode):
        raise StreamError(f"gpumem home {shown} is not a directory")
    uid = os.geteuid()
    if found.st_uid != uid:
        raise StreamError(
            f"gpumem home {shown} belongs to another user (uid {found.st_uid}); refused",
            hint="set GPUMEM_HOME to a directory of your own",
        )
    if found.st_mode & 0o022:
        raise StreamError(
            f"gpumem home {shown} is writable by others (mode {found.st_mode & 0o777:o}); refused",
            hint=f"chmod go-w {shown}, or set GPUMEM_HOME to a private directory",
        )


def safe_name(name: str) -> str:
    """``name`` reduced to characters safe in a directory name (no ``-``: it separates fields)."""
    cleaned = "".join(c if c.isalnum() or c in "._" else "_" for c in name).strip("._")
    return cleaned[:48] or "session"


@dataclass(frozen=True, slots=True)
class SessionName:
    """What a session directory's name says (host and name as reduced by :func:`safe_name`)."""

    start_time: float | None  # None: the time stamp did not parse
    host: str
    pid: int
    name: str


def format_session_name(start_time: float, host: str, pid: int, name: str) -> str:
    """The directory name ``<YYYYmmddTHHMMSS.ffffff>-<host>-<pid>-<name>`` (UTC start time)."""
    stamp = time.strftime(_STAMP, time.gmtime(start_time)) + f".{int(start_time % 1 * 1e6):06d}"
    return f"{stamp}-{safe_name(host)}-{int(pid)}-{safe_name(name)}"


def parse_session_name(directory_name: str) -> SessionName | None:
    """The fields of a name :func:`format_session_name` wrote (with or without a ``-N`` suffix).

    ``None`` when the name has not that shape; ``start_time`` is ``None`` when only the time
    stamp is malformed.
    """
    parts = directory_name.split("-")
    if len(parts) not in (4, 5) or not (parts[2].isascii() and parts[2].isdigit()):
        return None
    start = _parse_stamp(parts[0])
    return SessionName(start_time=start, host=parts[1], pid=int(parts[2]), name=parts[3])


def _parse_stamp(text: str) -> float | None:
    """``YYYYmmddTHHMMSS.ffffff`` (UTC) as epoch seconds; ``None`` if malformed.

    By hand, not ``time.strptime`` (about 30x slower: ``gpumem top`` parses every name).
    """
    if len(text) != 22 or text[8] != "T" or text[15] != "." or not text.isascii():
        return None
    digits = text[:8] + text[9:15] + text[16:]
    if not digits.isdigit():
        return None
    year, month, day = int(text[:4]), int(text[4:6]), int(text[6:8])
    hour, minute, second = int(text[9:11]), int(text[11:13]), int(text[13:15])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 62):
        return None
    try:
        return calendar.timegm((year, month, day, hour, minute, second)) + int(text[16:]) / 1e6
    except (ValueError, OverflowError):
        return None


def make_session_dir(root: Path, start_time: float, host: str, pid: int, name: str) -> Path:
    """Create (mode 0700) and return a new session directory under ``root``, unique by suffix."""
    base = format_session_name(start_time, host, pid, name)
    directory = root / base
    suffix = 1
    while True:
        try:
            directory.mkdir(mode=0o700)
            return directory
        except FileExistsError:
            suffix += 1
            directory = root / f"{base}-{suffix}"


def host_matches(recorded: str | None, host: str) -> bool:
    """Whether a session's recorded host (from its metadata or directory name) is ``host``.

    ``None`` (unknown) counts as this host, and so does the name reduced by :func:`safe_name`.
    """
    return recorded is None or recorded == host or recorded == safe_name(host)


def open_private_dir(path: Path) -> int:
    """A descriptor of the directory ``path`` (``O_NOFOLLOW``), checked to be ours and private.

    Raises:
        OSError: ``path`` is a symbolic link, not a directory, another user's, or writable by
            others.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    found = os.fstat(fd)
    if found.st_uid != os.geteuid() or found.st_mode & 0o022:
        os.close(fd)
        raise PermissionError(f"{path} is not a private directory of this user; not written")
    return fd


def _read_small(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(128).decode("ascii", "replace").strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def this_machine() -> dict[str, str | None]:
    """What tells this kernel boot and pid namespace apart from others sharing a home.

    ``boot_id`` (Linux's ``/proc/sys/kernel/random/boot_id``) and ``pid_ns`` (the pid
    namespace, ``pid:[4026531836]``); ``None`` where the system does not say. Two containers
    with one hostname differ in ``pid_ns``; two machines in ``boot_id``.
    """
    return {"boot_id": _read_small("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_namespace()}


def same_machine(meta: dict[str, Any] | None, host: str, here: dict[str, str | None]) -> bool:
    """Whether a session's pid can be checked here: same host, boot and pid namespace.

    A field the session (or this system) did not record counts as the same (older streams).
    """
    if meta is None:
        return True
    recorded = meta.get("host")
    if isinstance(recorded, str) and not host_matches(recorded, host):
        return False
    for key in ("boot_id", "pid_ns"):
        theirs, ours = meta.get(key), here.get(key)
        if isinstance(theirs, str) and ours is not None and theirs != ours:
            return False
    return True


def _default_pid_exists(pid: int) -> bool:
    import psutil

    return pid > 0 and bool(psutil.pid_exists(pid))


#: How long (s) a session whose pid cannot be checked here (another pid namespace, boot or
#: host) must have been silent (no heartbeat) before pruning may remove it.
PRUNE_STALE_AFTER = 24 * 3600.0
#: At most this many directories removed by one prune (the rest wait for the next session).
PRUNE_BATCH = 256


def prune_sessions(
    home: str | os.PathLike[str] | None = None,
    *,
    keep: int = 64,
    pid_exists: Callable[[int], bool] | None = None,
    host: str | None = None,
    stale_after: float = PRUNE_STALE_AFTER,
    clock: Callable[[], float] = time.time,
    limit: int = PRUNE_BATCH,
) -> list[Path]:
    """Remove the oldest provably ended session directories beyond the newest ``keep``.

    A session is ended when it has a ``summary.json``; when its pid can be checked here (same
    host, boot and pid namespace: :func:`same_machine`) and no longer exists; or when it cannot
    be checked and its files have been silent for ``stale_after`` seconds (the writer's
    heartbeat touches them every second). Anything else may be live and is never removed. At
    most ``limit`` directories go per call.
    """
    root = sessions_dir(home, create=False)
    pid_exists = pid_exists or _default_pid_exists
    this_host = host if host is not None else socket.gethostname()
    here = this_machine()
    now = clock()
    try:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    ended: list[Path] = []
    for name in names:
        directory = root / name
        if os.path.lexists(directory / SUMMARY):
            ended.append(directory)
            continue
        parsed = parse_session_name(name)
        if parsed is None:
            continue  # not a session's name: not ours to remove
        meta = read_json(directory / META)
        if same_machine(meta, this_host, here) and host_matches(parsed.host, this_host):
            if not pid_exists(parsed.pid):
                ended.append(directory)
        elif _silent_for(directory, now) > stale_after:
            ended.append(directory)
    doomed = ended[: max(0, min(limit, len(ended) - keep))]
    for directory in doomed:
        shutil.rmtree(directory, ignore_errors=True)
    return doomed


def _silent_for(directory: Path, now: float) -> float:
    """Seconds since any file of the session last changed (``inf`` if none can be read)."""
    newest = None
    for name in (SAMPLES, EVENTS, META):
        try:
            mtime = os.lstat(directory / name).st_mtime
        except OSError:
            continue
        newest = mtime if newest is None else max(newest, mtime)
    return float("inf") if newest is None else now - newest


def prune_in_background(home: str | os.PathLike[str] | None = None) -> threading.Thread:
    """Run :func:`prune_sessions` on a daemon thread (``track_memory`` never waits for it)."""

    def prune() -> None:
        with contextlib.suppress(Exception):  # housekeeping: never a failure of the session
            prune_sessions(home)

    thread = threading.Thread(target=prune, name="gpumem-prune", daemon=True)
    thread.start()
    return thread
