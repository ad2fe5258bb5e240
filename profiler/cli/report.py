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
import sys
from pathlib import Path

from profiler.errors import GpumemError
from profiler.report import find_report, load_report, render
from profiler.session.atomic import write_atomic

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


def _write(path: Path, data: bytes, what: str) -> None:
    """Write an output file the user asked for, atomically and with the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        write_atomic(path, data, mode=0o666 & ~umask)
    except OSError as exc:
        raise GpumemError(f"cannot write {what} to {path}: {exc.strerror or exc}") from None


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
    text = render(report, fmt)
    if args.memory_viz:
        if not report.snapshot:
            raise GpumemError(
                f"{path} has no allocator snapshot (captured on {report.device}, not CUDA)",
                hint="--memory-viz needs a report captured on a CUDA device",
            )
        source = path.parent / report.snapshot
        try:
            snapshot = source.read_bytes()
        except OSError as exc:
            raise GpumemError(f"cannot read the snapshot {source}: {exc.strerror or exc}") from None
        _write(Path(args.memory_viz), snapshot, "the snapshot")
        print(
            f"wrote {args.memory_viz}: drag it onto https://pytorch.org/memory_viz",
            file=sys.stderr,
        )
    if args.output:
        _write(Path(args.output), text.encode("utf-8"), "the report")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0
