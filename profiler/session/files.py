"""The one place gpumem opens files it did not just create: session files, configs, reports.

Everything read here is opened the same guarded way (:func:`open_regular`): ``O_NOFOLLOW`` (a
symbolic link in the last component is refused), ``O_NONBLOCK`` (a FIFO put in a file's place
cannot block the reader), and ``fstat`` on the open descriptor (only a regular file is read; a
device, FIFO, socket or directory is refused). At most a bounded number of bytes is read
(:data:`MAX_JSON_BYTES` for a whole file). JSON is parsed defensively (:func:`loads`): ``NaN``
and ``Infinity`` read as ``null``, a float that overflows (``1e999``) or an integer beyond
:data:`MAX_INT` as ``null`` (the field is unknown, the rest of the file is kept), and nesting
deeper than :data:`MAX_DEPTH` makes the file invalid.

For the session stream everything survives what it finds: a missing or unreadable file reads
as nothing (``None`` or no records), a torn last line waits for its newline, a corrupt line is
counted and skipped. Plain files only: no torch, no pandas.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat as stat_module
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

try:  # a dependency; without it (a bare checkout) lines are parsed by json alone
    import orjson as _orjson
except ModuleNotFoundError:  # pragma: no cover
    _orjson = None  # type: ignore[assignment]

from profiler.errors import StreamError
from profiler.text import printable

__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_JSON_BYTES",
    "JsonlTail",
    "NotRegularFile",
    "iter_lines",
    "load_json",
    "loads",
    "mtime",
    "open_regular",
    "parse_line",
    "read_bytes",
    "read_head",
    "read_json",
]

#: The largest whole JSON file read (meta, summary, modules, a config, a report).
MAX_JSON_BYTES = 16 * 1024 * 1024
#: The deepest JSON nesting accepted (gpumem's own files nest fewer than 10 levels).
MAX_DEPTH = 64
#: The largest magnitude an integer may have (beyond it the value is unknown: ``null``).
MAX_INT = 2**63 - 1
#: The most bytes one :meth:`JsonlTail.read` takes (the rest comes at the next call).
MAX_READ = 8 * 1024 * 1024
#: The longest JSON line accepted (a longer one is garbage and is skipped).
MAX_LINE = 4 * 1024 * 1024

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS |= getattr(os, "O_CLOEXEC", 0)


class NotRegularFile(OSError):
    """A path that names a device, FIFO, socket, directory or symbolic link, not a file."""


def _kind(mode: int) -> str:
    if stat_module.S_ISDIR(mode):
        return "a directory"
    if stat_module.S_ISFIFO(mode):
        return "a FIFO"
    if stat_module.S_ISCHR(mode) or stat_module.S_ISBLK(mode):
        return "a device"
    if stat_module.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def open_regular(
    path: str | os.PathLike[str], *, dir_fd: int | None = None, follow_symlinks: bool = False
) -> int:
    """A read-only descriptor of the regular file ``path`` (the caller closes it).

    Args:
        path: the file.
        dir_fd: a directory descriptor ``path`` is relative to.
        follow_symlinks: accept a symbolic link to a regular file (for a path the user named,
            such as a Hugging Face cache's ``config.json``); session files never are.

    Raises:
        NotRegularFile: ``path`` is a symbolic link, device, FIFO, socket or directory.
        OSError: it cannot be opened (missing, no permission, ...).
    """
    flags = _OPEN_FLAGS & ~getattr(os, "O_NOFOLLOW", 0) if follow_symlinks else _OPEN_FLAGS
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if not follow_symlinks and (exc.errno == errno.ELOOP or _is_link(path, dir_fd)):
            raise NotRegularFile(exc.errno, "a symbolic link (not followed)") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat_module.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, f"{_kind(mode)}, not a regular file")
    return fd


def _is_link(path: str | os.PathLike[str], dir_fd: int | None) -> bool:
    try:
        return stat_module.S_ISLNK(os.lstat(path, dir_fd=dir_fd).st_mode)
    except (OSError, ValueError):
        return False


def read_bytes(
    path: str | os.PathLike[str], *, limit: int = MAX_JSON_BYTES, follow_symlinks: bool = False
) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises:
        NotRegularFile: as :func:`open_regular`.
        OSError: unreadable, or larger than ``limit`` (``EFBIG``).
    """
    fd = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return b"".join(chunks)


def _parse_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _parse_int(text: str) -> int | None:
    if len(text) > 20:  # beyond 2**63 whatever it says; int() of 5000 digits raises
        return None
    value = int(text)
    return value if -MAX_INT <= value <= MAX_INT else None


def _parse_constant(_: str) -> None:
    return None  # NaN, Infinity, -Infinity: unknown


def _depth_ok(value: Any, limit: int) -> bool:
    """Whether parsed JSON ``value`` nests at most ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON defensively: non-finite and huge numbers become ``None``, nesting is bounded.

    Raises:
        ValueError: not UTF-8, not JSON, or nested deeper than ``max_depth``.
    """
    try:
        value = json.loads(
            data,
            parse_float=_parse_float,
            parse_int=_parse_int,
            parse_constant=_parse_constant,
        )
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    if not _depth_ok(value, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    return value


def load_json(
    path: str | os.PathLike[str],
    *,
    what: str = "file",
    limit: int = MAX_JSON_BYTES,
    follow_symlinks: bool = False,
) -> Any:
    """The parsed JSON of the regular file ``path`` (:func:`read_bytes`, :func:`loads`).

    Raises:
        StreamError: a one-line reason: missing, not a regular file, unreadable, too large, not
            UTF-8, not JSON, too deeply nested.
    """
    shown = printable(path, limit=200)
    try:
        raw = read_bytes(path, limit=limit, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise StreamError(f"cannot read {what} {shown}: no such file") from None
    except NotRegularFile as exc:
        raise StreamError(f"{what} {shown} is {exc.strerror}; not read") from None
    except OSError as exc:
        raise StreamError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    try:
        return loads(raw)
    except UnicodeDecodeError:
        raise StreamError(f"{what} {shown} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise StreamError(
            f"{what} {shown} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise StreamError(f"{what} {shown} is not valid JSON: {exc}") from None


class JsonlTail:
    """Reads the JSON lines appended to a file since the last call.

    Remembers its offset; a file replaced (rotation: another inode at the path) is drained and
    reopened, a truncated one is reread from the start. A line is parsed only once its newline
    is there. On first open of a file larger than ``initial_bytes`` only its last
    ``initial_bytes`` are read; one call reads at most :data:`MAX_READ` bytes (the rest comes at
    the next). Only a regular file is opened (:func:`open_regular`).
    """

    def __init__(self, path: Path, *, initial_bytes: int = 256 * 1024) -> None:
        self.path = path
        self._where = os.fspath(path)  # a str: os.lstat of a Path costs twice as much
        self.initial_bytes = initial_bytes
        self.skipped = 0
        self._handle: IO[bytes] | None = None
        self._inode: int | None = None
        self._buffer = b""
        self._drop_first = False
        self._offset = 0  # where the next read starts (not asked of the file: a system call)

    def read(self, *, limit: int = MAX_READ) -> list[dict[str, Any]]:
        """The complete, well-formed JSON objects appended since the last call."""
        return self._parse(self.read_lines(limit=limit))

    def read_lines(self, *, limit: int = MAX_READ) -> list[bytes]:
        """The complete lines appended since the last call, unparsed (blank ones left out).

        A line longer than :data:`MAX_LINE` is left out and counted in ``skipped``.
        """
        try:
            stat = os.lstat(self._where)
        except OSError:
            stat = None
        if stat is not None and not stat_module.S_ISREG(stat.st_mode):
            stat = None  # a link, FIFO or device in the file's place: nothing to read
        records: list[bytes] = []
        if self._handle is not None and stat is not None and stat.st_ino != self._inode:
            try:  # the rotated file's last lines
                rest = self._handle.read(
                    _left(self._handle, os.fstat(self._handle.fileno()), limit)
                )
            except OSError:
                rest = b""
            self._close()
            records = self._split(rest, final=True)
        if self._handle is None:
            if stat is None or not self._open(stat.st_size):
                return records
        elif stat is not None and stat.st_size < self._offset:
            self._offset = self._handle.seek(0)  # truncated
            self._buffer = b""
        assert self._handle is not None
        left = 0 if stat is None else max(0, min(limit, stat.st_size - self._offset))
        if not left:
            return records
        try:
            data = self._handle.read(left)
        except OSError:
            return records
        self._offset += len(data)
        records.extend(self._split(data, final=False))
        return records

    def _open(self, size: int) -> bool:
        try:
            fd = open_regular(self._where)
        except OSError:
            return False
        self._handle = os.fdopen(fd, "rb", buffering=0)  # one system call per read
        self._inode = os.fstat(fd).st_ino
        self._offset = 0
        if size > self.initial_bytes:
            self._offset = self._handle.seek(size - self.initial_bytes)
            self._drop_first = True
        return True

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

    def _split(self, data: bytes, *, final: bool) -> list[bytes]:
        if not data and not final:
            return []
        data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = b"" if final else lines.pop()
        if len(self._buffer) > MAX_LINE:  # a "line" this long is garbage
            self._buffer = b""
            self.skipped += 1
            self._drop_first = True  # and so is the rest of it, up to the next newline
        if self._drop_first and lines:
            lines.pop(0)
            self._drop_first = False
        out: list[bytes] = []
        for line in lines:
            if len(line) > MAX_LINE:
                self.skipped += 1
            elif line and not line.isspace():
                out.append(line)
        return out

    def _parse(self, lines: list[bytes]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in lines:
            value = parse_line(line)
            if value is None:
                self.skipped += 1
            else:
                out.append(value)
        return out


def parse_line(line: bytes) -> dict[str, Any] | None:
    """One ``.jsonl`` line as a JSON object; ``None`` if it is not one (``NaN`` reads as null).

    orjson parses the lines gpumem writes about five times faster than :mod:`json`; what it
    refuses (``NaN``, integers beyond 64 bits, lone surrogates, deep nesting) goes to
    :mod:`json`, so the result is the same either way.
    """
    if _orjson is not None:
        try:
            value = _orjson.loads(line)
        except ValueError:
            pass
        else:
            return value if isinstance(value, dict) else None
    try:
        value = json.loads(line, parse_constant=_parse_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _left(handle: IO[bytes], stat: os.stat_result | None, limit: int) -> int:
    """How many bytes to read: what the file holds past the offset, at most ``limit``."""
    if stat is None:
        return 0
    return max(0, min(limit, stat.st_size - handle.tell()))


def read_json(path: Path, *, limit: int = MAX_JSON_BYTES) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` if missing, unreadable, not a regular file, too
    large, too deeply nested or not an object."""
    try:
        value = loads(read_bytes(path, limit=limit))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_head(path: str | os.PathLike[str], size: int) -> bytes:
    """The first ``size`` bytes of the regular file ``path``; ``b""`` if it cannot be read."""
    try:
        fd = open_regular(path)
    except OSError:
        return b""
    try:
        return os.read(fd, size)
    except OSError:
        return b""
    finally:
        os.close(fd)


def mtime(path: str | os.PathLike[str]) -> float | None:
    """``path``'s modification time (the link's own for a symbolic link); ``None`` if unknown."""
    try:
        return os.lstat(path).st_mtime
    except (OSError, ValueError):
        return None


def iter_lines(path: Path) -> Iterable[dict[str, Any]]:
    """Every well-formed JSON object in a ``.jsonl`` file (corrupt and torn lines skipped)."""
    tail = JsonlTail(path, initial_bytes=1 << 62)
    records = tail.read(limit=1 << 62)
    tail.close()
    return records
