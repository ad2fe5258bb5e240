"""``gpumem top``: the live dashboard of GPUs, processes and tracked sessions.

Registered in the ``gpumem.commands`` entry-point group, so :mod:`profiler.cli` finds it without
importing :mod:`tui` by name. Loading this module imports neither Textual nor Rich (every
``gpumem`` command loads it to build the parser), and ``--once`` never imports Textual.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from profiler.errors import GpumemError, UsageError
from profiler.text import printable

HELP = "Live dashboard of GPUs, processes and tracked sessions (q quits, ? helps)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpumem top``."""
    parser.add_argument(
        "--interval", default="1.0", metavar="SECONDS", help="seconds between refreshes (1.0)"
    )
    parser.add_argument(
        "--home", default=None, help="the gpumem home to read sessions from ($GPUMEM_HOME)"
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame as text and exit (no terminal)"
    )
    parser.add_argument("--json", action="store_true", help="with --once: print the frame as JSON")
    parser.add_argument(
        "--sort",
        default="memory",
        help="process order: memory, pid, user or command (memory)",
    )
    parser.add_argument("--width", default="120", help="with --once: text width (120)")
    parser.add_argument(
        "--demo", action="store_true", help="show scripted demo GPUs instead of NVML"
    )


def _positive(text: str, option: str, *, kind: type = float, highest: float) -> Any:
    shown = printable(text, limit=40)
    try:
        value = kind(text) if len(text) <= 40 else None
    except ValueError:
        value = None
    if value is None:
        raise UsageError(f"{option} must be a number, got {shown!r}")
    if not value > 0:  # True for NaN
        raise UsageError(f"{option} must be positive, got {shown!r}")
    if not value <= highest:
        raise UsageError(f"{option} must be at most {highest:g}, got {shown!r}")
    return value


def make_builder(args: argparse.Namespace) -> Any:
    """The snapshot builder the options describe (NVML is opened later, off the UI thread)."""
    from profiler.session.reader import SessionReader
    from tui.snapshot import SnapshotBuilder

    if args.home is not None:
        shown = printable(args.home, limit=200)
        try:
            home = Path(args.home).expanduser()
            not_a_directory = home.exists() and not home.is_dir()
        except (OSError, ValueError, RuntimeError) as exc:  # ~nosuchuser, a NUL, too long
            raise UsageError(f"--home {shown!r} cannot be used: {exc}") from None
        if not_a_directory:
            raise UsageError(f"--home {shown!r} is not a directory")
    # the dashboard shows a job as one row: its ranks' samples are read once it is opened
    reader = SessionReader(args.home, ranks_by_step=not args.once)
    if args.demo:
        from profiler.backends.fake import demo_source

        return SnapshotBuilder(demo_source(), reader)

    def open_nvml() -> Any:
        from profiler.backends.nvml import default_source

        return default_source()

    return SnapshotBuilder(None, reader, source_factory=open_nvml)


def _require_textual() -> None:
    """One line, not a traceback, where Textual is missing (``--once`` works without it)."""
    try:
        import textual  # noqa: F401 - the dashboard's one optional heavy dependency
    except ModuleNotFoundError:
        raise GpumemError(
            "the live dashboard needs Textual, which is not installed",
            hint="pip install 'textual>=0.80', or use gpumem top --once [--json] without it",
        ) from None


def run(args: argparse.Namespace) -> int:
    """Run the dashboard, or print one frame with ``--once``."""
    from tui.snapshot import PROCESS_SORTS

    interval = _positive(args.interval, "--interval", highest=3600)
    width = _positive(args.width, "--width", kind=int, highest=1000)
    if args.sort not in PROCESS_SORTS:
        raise UsageError(
            f"unknown sort {printable(args.sort, limit=40)!r}",
            hint=f"use one of {', '.join(PROCESS_SORTS)}",
        )
    if args.json and not args.once:
        raise UsageError("--json needs --once", hint="gpumem top --once --json")
    builder = make_builder(args)
    if args.once:
        from tui.widgets.render import frame_text, snapshot_to_dict

        snapshot = builder.build()
        if args.json:
            sys.stdout.write(json.dumps(snapshot_to_dict(snapshot, sort=args.sort), indent=2))
            sys.stdout.write("\n")
        else:
            sys.stdout.write(frame_text(snapshot, width=max(60, width), sort=args.sort))
        return 0
    _require_textual()
    if not sys.stderr.isatty():  # Textual draws on stderr
        raise UsageError("gpumem top needs a terminal", hint="use gpumem top --once [--json]")
    from tui.app import GpumemTopApp

    app = GpumemTopApp(builder, interval=interval)
    app.sort = args.sort
    app.run()
    return 0
