"""``gpumem report``: render a saved OOM report as Markdown, HTML or JSON.

``PATH_OR_SESSION`` is a report file (``.json``, or its ``.md``/``.html`` sibling), a session
directory, a session name under ``$GPUMEM_HOME/sessions``, or ``latest``. The output goes to
stdout, or atomically to ``--output``. ``--memory-viz FILE`` writes the CUDA allocator snapshot
that was saved with the report, for https://pytorch.org/memory_viz; a report captured without
CUDA has none, and the command then says so on one line and exits 1.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from profiler.errors import GpumemError, StreamError
from profiler.report import find_report, load_report, render
from profiler.session import files
from profiler.session.atomic import write_atomic
from profiler.text import printable

HELP = "Render a saved OOM report (Markdown, HTML or JSON)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` subcommand's arguments."""
    parser.add_argument(
        "target",
        metavar="PATH_OR_SESSION",
        help="a report file, a session directory or name, or 'latest'",
    )
    parser.add_argument(
        "--format",
        "-f",
        choices=("md", "html", "json"),
        default=None,
        help="output format (default: md, or the --output file's extension)",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument(
        "--memory-viz",
        metavar="FILE",
        help="also write the CUDA allocator snapshot (open it at pytorch.org/memory_viz)",
    )
    parser.add_argument("--home", metavar="DIR", help="gpumem home (default: $GPUMEM_HOME)")


#: The largest allocator snapshot copied by ``--memory-viz``.
MAX_SNAPSHOT_BYTES = 4 * 1024**3


def _write(path: Path, data: bytes, what: str) -> None:
    """Write an output file the user asked for.

    A regular file (or a new one) is written atomically with the usual permissions; through a
    symbolic link, the file it points at is replaced and the link kept. A character device or
    a FIFO the user named (``/dev/stdout``, a pipe) is written straight through, never
    replaced; any other kind of file (a directory, a socket, a block device) is refused.
    """
    shown = printable(path, limit=200)
    try:
        found = os.stat(path)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise GpumemError(f"cannot write {what} to {shown}: {exc.strerror or exc}") from None
    try:
        if found is not None and (stat.S_ISCHR(found.st_mode) or stat.S_ISFIFO(found.st_mode)):
            _write_through(path, data)
            return
        if found is not None and not stat.S_ISREG(found.st_mode):
            raise GpumemError(
                f"cannot write {what} to {shown}: it exists and is not a regular file",
                hint="name a new file, a regular file, or a device such as /dev/stdout",
            )
        target = Path(os.path.realpath(path)) if found is not None else path
        umask = os.umask(0)
        os.umask(umask)
        write_atomic(target, data, mode=0o666 & ~umask)
    except OSError as exc:
        raise GpumemError(f"cannot write {what} to {shown}: {exc.strerror or exc}") from None


def _write_through(path: Path, data: bytes) -> None:
    """Write ``data`` to a device or FIFO in place (no create, no truncate, no rename)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _read_snapshot(report_path: Path, name: str) -> bytes:
    """The snapshot a report names, read only from inside the report's own directory."""
    directory = report_path.parent
    source = directory / name
    inside = os.path.realpath(directory)
    if (
        not name
        or Path(name).is_absolute()
        or ".." in Path(name).parts
        or os.path.dirname(os.path.realpath(source)) != inside
    ):
        raise GpumemError(
            f"{printable(report_path, limit=200)} names a snapshot outside its directory "
            f"({printable(name, limit=80)!r}); not read",
            hint="a report's snapshot is a file beside it",
        )
    try:
        return files.read_bytes(source, limit=MAX_SNAPSHOT_BYTES)
    except OSError as exc:
        raise GpumemError(
            f"cannot read the snapshot {printable(source, limit=200)}: {exc.strerror or exc}"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Render the report; 0 on success."""
    path = find_report(args.target, home=args.home)
    report = load_report(path)
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lstrip(".").lower() if args.output else ""
        fmt = {"md": "md", "markdown": "md", "html": "html", "htm": "html", "json": "json"}.get(
            suffix, "md"
        )
    try:
        text = render(report, fmt)
    except (ValueError, OverflowError) as exc:  # a value no date or number format can show
        raise StreamError(f"{path} holds a value out of range ({exc}); not rendered") from None
    if args.memory_viz:
        if not report.snapshot:
            raise GpumemError(
                f"{path} has no allocator snapshot (captured on {report.device}, not CUDA)",
                hint="--memory-viz needs a report captured on a CUDA device",
            )
        snapshot = _read_snapshot(path, report.snapshot)
        _write(Path(args.memory_viz), snapshot, "the snapshot")
        print(
            f"wrote {args.memory_viz}: drag it onto https://pytorch.org/memory_viz",
            file=sys.stderr,
        )
    if args.output:
        _write(Path(args.output), text.encode("utf-8"), "the report")
    else:  # to a terminal or a pipe: a name or message in the report cannot inject escapes
        sys.stdout.write(printable(text, newlines=True))
        sys.stdout.flush()
    return 0
