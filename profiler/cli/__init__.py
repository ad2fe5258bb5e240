"""The ``gpumem`` command: the parser, the dispatch, and the commands other packages register.

Each command is a module exposing ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``, which imports its heavy dependencies (torch, pandas) inside ``run`` so that
every command starts fast. The built-in ones are the modules of this package (``demo``,
``estimate``, ``devices``, ``report``, ``export``, ``job``). Any installed package adds its own through the
``gpumem.commands`` entry-point group (``name = "package.module"``): that is how the Textual
dashboard joins as ``gpumem top`` while :mod:`profiler` never imports it (pyproject.toml declares
``top = "tui.top"``). Our errors become one line on stderr and an exit code (1 failure, 2 bad
usage), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, Protocol

from profiler.cli import demo, devices, estimate, export, job, report
from profiler.cli import run as run_script
from profiler.errors import GpumemError
from profiler.text import printable

#: The name gpumem is published under on PyPI (``gpumem`` there is an unrelated project).
DISTRIBUTION = "torch-gpumem"
#: The entry-point group other packages register ``gpumem`` subcommands in.
COMMAND_GROUP = "gpumem.commands"


class Command(Protocol):
    """What a subcommand module provides."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


BUILTIN: dict[str, Command] = {
    "demo": demo,
    "estimate": estimate,
    "devices": devices,
    "report": report,
    "run": run_script,
    "export": export,
    "job": job,
}


class _Unloadable:
    """A registered command whose module failed to import: the other commands keep working, and
    asking for this one raises the import's own error (a bug shows its traceback)."""

    def __init__(self, entry_point: metadata.EntryPoint, error: Exception) -> None:
        self.HELP = f"(could not be loaded from {entry_point.value})"
        self._error = error

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.set_defaults(_takes_any=True)  # its options are unknown: take whatever is given

    def run(self, args: argparse.Namespace) -> NoReturn:
        raise self._error


def registered_commands() -> dict[str, Command]:
    """The commands installed packages declare in :data:`COMMAND_GROUP`, loaded, by name.

    A name a built-in command already has is skipped. Nothing is registered when the
    distribution is not installed (a bare source checkout on ``PYTHONPATH``).
    """
    found: dict[str, Command] = {}
    for entry_point in metadata.entry_points(group=COMMAND_GROUP):
        if entry_point.name in BUILTIN or entry_point.name in found:
            continue
        try:
            found[entry_point.name] = entry_point.load()
        except Exception as exc:  # noqa: BLE001 - raised again when the command is run
            found[entry_point.name] = _Unloadable(entry_point, exc)
    return found


def version() -> str:
    """``torch-gpumem 0.1.0``: the installed distribution's version, else the source tree's."""
    try:
        return f"{DISTRIBUTION} {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        project = {}
    if project.get("name") == DISTRIBUTION and isinstance(project.get("version"), str):
        return f"{DISTRIBUTION} {project['version']} (source tree, not installed)"
    return f"{DISTRIBUTION} (version unknown: not installed)"


class _VersionAction(argparse.Action):
    """``--version``, read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version())
        parser.exit()


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The argument parser with the built-in and the registered subcommands."""
    parser = argparse.ArgumentParser(
        prog="gpumem", description="Live GPU memory profiler for PyTorch."
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the distribution's name and version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    every = {**BUILTIN, **(registered_commands() if commands is None else commands)}
    for name, module in every.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def _execute(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command: our errors become one line on stderr and their exit code.

    Anything else that escapes a command is a gpumem bug; it still becomes one line (exit 1)
    rather than a traceback, and ``GPUMEM_DEBUG=1`` shows the traceback for a bug report.
    """
    try:
        return int(run(args) or 0)
    except GpumemError as exc:
        _error_line(name, exc.one_line())
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get("GPUMEM_DEBUG"):
            raise
        _error_line(
            name,
            f"internal error: {type(exc).__name__}: {exc} "
            "(hint: please report it; GPUMEM_DEBUG=1 shows the traceback)",
        )
        return 1


def _error_line(name: str, message: str) -> None:
    """One line on stderr, its control characters made visible, at most 1,000 characters."""
    line = printable(f"gpumem {name}: error: {message}", limit=1000)
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr)


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so that the exit flush cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gpumem``; returns the exit code.

    A built-in command skips the entry-point scan (no top-level option takes a value, so the
    first word is the command).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser({} if first in BUILTIN else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "_takes_any", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return _execute(args.command, args._run, args)


def run_command(name: str, module: Command, argv: Sequence[str] | None = None) -> int:
    """Run one command module as ``gpumem NAME`` without the registry (``python -m tui``)."""
    parser = argparse.ArgumentParser(prog=f"gpumem {name}", description=module.HELP)
    module.add_arguments(parser)
    return _execute(name, module.run, parser.parse_args(argv))
