"""``gpumem export prometheus``: this host's sessions as Prometheus metrics.

Serves ``http://BIND:PORT/metrics`` (127.0.0.1:9400 unless told otherwise) until interrupted,
reading the session stream under ``--home`` (default ``$GPUMEM_HOME``) at each scrape; the
tracked processes are not touched. Run one per host; metric names and labels are in
:mod:`profiler.export.prometheus`, a Grafana dashboard in ``recipes/grafana/gpumem.json``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from profiler.errors import GpumemError, UsageError

HELP = "Serve this host's sessions as Prometheus metrics."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``export`` subcommand's arguments."""
    parser.add_argument("target", choices=("prometheus",), help="what to export to")
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", default="9400", help="port to listen on (default 9400)")
    parser.add_argument("--home", metavar="DIR", help="gpumem home (default: $GPUMEM_HOME)")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"--port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 after a clean stop."""
    from profiler.export.prometheus import serve

    port = _port(args.port)
    try:
        server, _thread = serve(bind=args.bind, port=port, home=args.home)
    except OSError as exc:
        raise GpumemError(
            f"cannot listen on {args.bind}:{port}: {exc.strerror or exc}",
            hint="choose another --port, or stop what holds this one",
        ) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"gpumem: serving metrics on http://{args.bind}:{port}/metrics", file=sys.stderr)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0
