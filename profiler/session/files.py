"""The one place session readers open files: JSON lines tailed, small JSON files read whole.

Everything here survives what it finds: a missing or unreadable file reads as nothing (``None``
or no records), a torn last line waits for its newline, a corrupt line is counted and skipped.
Plain files only: no torch, no pandas.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["JsonlTail", "iter_lines", "mtime", "read_json"]


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


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` if missing, unreadable or not an object."""
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def mtime(path: Path) -> float | None:
    """``path``'s modification time; ``None`` if it cannot be read."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def iter_lines(path: Path) -> Iterable[dict[str, Any]]:
    """Every well-formed JSON object in a ``.jsonl`` file (corrupt and torn lines skipped)."""
    tail = JsonlTail(path, initial_bytes=1 << 62)
    records = tail.read()
    tail.close()
    return records
