"""``gpumem run [options] script.py [args]``: profile an unmodified script.

The script runs as ``__main__`` (its ``sys.argv`` is ``script.py args``). Tracking starts at the
first forward of a module, the model being trained, which is then tracked like
``track_memory(model)``; its optimizer is picked up at its first step. At the end the breakdown is
printed to stderr (``--json``: the summary and metrics as JSON on stdout), and a script that dies
out of memory gets its post-mortem written. The script's own exit code is kept; an exception it
raises is printed as Python would and exits 1.

Known limit: the first module called is taken as the model, so a script that calls another
module first (a separate encoder, say) tracks that one.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

from profiler.errors import UsageError
from profiler.units import parse_bytes

HELP = "Run a Python script with tracking attached to the model it trains (no code changes)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpumem run``."""
    parser.add_argument("--mode", choices=("auto", "exact", "fast"), default="auto")
    parser.add_argument("--capacity", help="a simulated device size, e.g. 24GB (exact mode)")
    parser.add_argument("--gpu", help="a GPU from the catalogue whose memory is the capacity")
    parser.add_argument("--name", help="the session's name (default: the script's)")
    parser.add_argument("--no-stream", action="store_true", help="do not publish to gpumem top")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument("script", help="the Python script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")


class Launcher:
    """Starts tracking at the first module forward, and closes it when the script ends."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.mem: Any = None
        self._handle: Any = None

    def install(self) -> None:
        """Wait for the first forward."""
        from torch.nn.modules import module as module_mod

        self._handle = module_mod.register_module_forward_pre_hook(self._first_forward)

    def _first_forward(self, module: Any, args: Any) -> None:
        if self.mem is not None:
            return
        self._handle.remove()
        from profiler.tracker import track_memory

        self.mem = track_memory(module, **self.options)
        self.mem.__enter__()

    def close(self, exc: BaseException | None) -> None:
        """Stop tracking (an out-of-memory ``exc`` writes the post-mortem)."""
        if self._handle is not None:
            self._handle.remove()
        if self.mem is not None and self.mem._engine.state.active:
            self.mem.__exit__(type(exc) if exc is not None else None, exc, None)


def run(args: argparse.Namespace) -> int:
    """Run the script under the launcher; its exit code (1 when it raised)."""
    script = Path(args.script)
    if not script.is_file():
        raise UsageError(f"no such script: {script}", hint="gpumem run path/to/train.py [args]")
    options: dict[str, Any] = {
        "mode": args.mode,
        "name": args.name or script.stem,
        "stream": not args.no_stream,
    }
    if args.capacity is not None:
        options["capacity"] = parse_bytes(args.capacity)
    if args.gpu is not None:
        options["gpu"] = args.gpu
    import torch

    launcher = Launcher(options)
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    code, raised = 0, None
    namespace: dict[str, Any] = {}  # the script's globals, alive until the tracker closes
    launcher.install()
    try:
        namespace = runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException as exc:  # the script's own error: shown as Python would show it
        raised, code = exc, 1
    finally:
        launcher.close(raised)
    if raised is not None:
        if isinstance(raised, torch.OutOfMemoryError):
            print(f"gpumem run: {type(raised).__name__}: {raised}".splitlines()[0], file=sys.stderr)
        else:
            traceback.print_exception(raised)
    _report(launcher.mem, args.json)
    namespace.clear()
    return code


def _report(mem: Any, as_json: bool) -> None:
    if mem is None:
        print("gpumem run: the script ran no module forward; nothing was tracked", file=sys.stderr)
        return
    if as_json:
        info = mem.info
        facts = {"model": info.model_class, "optimizer": info.optimizer_class}
        print(json.dumps({"summary": mem.summary(), "metrics": mem.metrics(), **facts}))
    else:
        print(mem.table(), file=sys.stderr)
    report = mem.oom_report
    if report is not None and report.path is not None:
        print(f"gpumem run: out-of-memory report: {report.path}", file=sys.stderr)
