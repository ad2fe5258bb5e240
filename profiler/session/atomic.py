"""The one atomic writer: a file appears whole or not at all, and never replaces a non-file.

Every file gpumem writes for others to read (session metadata and summaries, OOM reports,
snapshots, the GPU kit's output) goes through :func:`write_atomic`: the bytes go to a temporary
file in the same directory, are flushed, and ``os.replace`` puts them in place, so a reader sees
either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

__all__ = ["write_atomic", "write_atomic_at", "write_text_atomic"]


def write_atomic(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, durable: bool = False
) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, ``os.replace``).

    Args:
        path: the destination; its directory must exist.
        data: the bytes.
        mode: the new file's permission bits (default: the user's only).
        durable: also ``fsync`` before the rename (survives a power cut, costs milliseconds).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the write failed (the temporary file is removed), or ``path`` exists and is not
            a regular file (a device, FIFO, directory or symbolic link is never replaced).
    """
    target = Path(path)
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise IsADirectoryError(f"{target} exists and is not a regular file; not replaced")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, mode: int = 0o600, durable: bool = False
) -> Path:
    """:func:`write_atomic` for UTF-8 text."""
    return write_atomic(path, text.encode("utf-8"), mode=mode, durable=durable)


def write_atomic_at(dir_fd: int, name: str, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` atomically as ``name`` inside the directory open as ``dir_fd``.

    For files in a directory gpumem holds open (a session's): every step goes through the
    descriptor and ``O_NOFOLLOW``, so swapping the directory (or a file in it) for a symbolic
    link cannot redirect the write anywhere else. ``name`` is a plain file name.

    Raises:
        OSError: the write failed (the temporary file is removed), or ``name`` exists and is
            not a regular file.
    """
    try:
        existing = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise IsADirectoryError(f"{name} exists and is not a regular file; not replaced")
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
