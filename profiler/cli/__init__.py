"""The ``gpumem`` entry point: one subcommand per module in :mod:`tui.commands`.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``,
and imports its heavy dependencies (Textual, pandas) inside ``run`` so that every command starts
fast. Our errors become one line on stderr and an exit code (1 failure, 2 bad usage).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from profiler.errors import GpumemError

COMMANDS: dict[str, str] = {
    "demo": "tui.commands.demo",
    "estimate": "tui.commands.estimate",
    "devices": "tui.commands.devices",
    "top": "tui.commands.top",
    "report": "tui.commands.report",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="gpumem", description="Live GPU memory profiler for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command not built yet
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gpumem``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except GpumemError as exc:
        print(f"gpumem {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
