"""The local sessions as Prometheus metrics, read from the session stream.

One exporter per host (``gpumem export prometheus``) reads every session under ``$GPUMEM_HOME``
at each scrape with a :class:`~profiler.export.tail.StreamTail` (the ends of the streams, not
their history); the tracked processes do not change (nothing is sent from them). Each series carries the labels ``session``, ``name``,
``rank``, ``local_rank``, ``job``, ``host`` and ``device`` (an empty string where the stream
does not say). The metrics:

- ``gpumem_memory_bytes{category=...}``: bytes per category at the latest sample;
- ``gpumem_total_bytes``: their sum; ``gpumem_peak_bytes``: the session's highest total;
- ``gpumem_predicted_bytes{category=...}``: the formulas' figure (categories with one), from
  the newest ``prediction`` event (made at entry, refined at the first step end and at exit),
  else from ``meta.json``;
- ``gpumem_step``: the step the session is at (the stream's step number); ``gpumem_live``: 1 while the process runs, 0 once ended;
- ``gpumem_capacity_bytes``: the device's capacity where the stream knows it;
- ``gpumem_leak_alerts``: the leak alerts the session raised (counted from its events).

Cost: a scrape reads the last 16 KiB of each session's samples and the step ends appended to
its events, plus a few series per session (64 sessions: see the README's figures).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from profiler.export.tail import StreamTail
from profiler.records import CATEGORIES
from profiler.session.reader import SessionMeta

__all__ = ["LABELS", "SessionCollector", "registry_for", "serve", "session_labels"]

#: The labels every series carries, in order.
LABELS = ("session", "name", "rank", "local_rank", "job", "host", "device")
_NAMES = tuple(str(c) for c in CATEGORIES)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def session_labels(meta: SessionMeta) -> list[str]:
    """The label values of a session's series, in :data:`LABELS` order."""
    return [
        meta.id,
        meta.name,
        _text(meta.rank),
        _text(meta.local_rank),
        _text(meta.job_id),
        _text(meta.host),
        _text(meta.device),
    ]


class SessionCollector(Collector):
    """A Prometheus collector over a :class:`StreamTail` (polled once per scrape)."""

    def __init__(self, reader: StreamTail) -> None:
        self.reader = reader
        self._lock = threading.Lock()  # scrapes may overlap; the reader is not thread-safe

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One scrape: every listed session's series."""
        with self._lock:
            views = self.reader.poll()
        memory = GaugeMetricFamily(
            "gpumem_memory_bytes",
            "Bytes per category at the latest sample",
            labels=[*LABELS, "category"],
        )
        predicted = GaugeMetricFamily(
            "gpumem_predicted_bytes",
            "Bytes the formulas predict per category",
            labels=[*LABELS, "category"],
        )
        total = GaugeMetricFamily("gpumem_total_bytes", "Tracked bytes now", labels=LABELS)
        peak = GaugeMetricFamily("gpumem_peak_bytes", "The session's highest total", labels=LABELS)
        step = GaugeMetricFamily("gpumem_step", "The step the session is at", labels=LABELS)
        live = GaugeMetricFamily("gpumem_live", "1 while the process runs", labels=LABELS)
        capacity = GaugeMetricFamily(
            "gpumem_capacity_bytes", "The device's capacity, where known", labels=LABELS
        )
        leaks = GaugeMetricFamily(
            "gpumem_leak_alerts", "Leak alerts the session raised", labels=LABELS
        )
        for view in views:
            labels = session_labels(view.meta)
            if view.bytes is not None:
                for name, value in zip(_NAMES, view.bytes, strict=False):
                    memory.add_metric([*labels, name], value)
            for name, figure in view.predicted:
                if figure is not None:
                    predicted.add_metric([*labels, name], figure)
            if view.current is not None:
                total.add_metric(labels, view.current)
            if view.peak is not None:
                peak.add_metric(labels, view.peak)
            if view.step is not None:
                step.add_metric(labels, view.step)
            live.add_metric(labels, 1 if view.live else 0)
            if view.meta.capacity is not None:
                capacity.add_metric(labels, view.meta.capacity)
            leaks.add_metric(labels, view.leaks)
        yield from (memory, predicted, total, peak, step, live, capacity, leaks)


def registry_for(reader: StreamTail) -> CollectorRegistry:
    """A registry holding only the sessions' collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SessionCollector(reader))
    return registry


def serve(
    *, bind: str = "127.0.0.1", port: int = 9400, home: str | None = None
) -> tuple[Any, threading.Thread]:
    """Serve ``home``'s sessions on ``http://bind:port/metrics`` from a daemon thread.

    Returns the HTTP server (``shutdown()`` stops it) and its thread. Binds only where told:
    ``127.0.0.1`` unless another address is given.

    Raises:
        OSError: the address is taken or cannot be bound.
    """
    from prometheus_client import start_http_server

    reader = StreamTail(home)
    server, thread = start_http_server(port, addr=bind, registry=registry_for(reader))
    return server, thread
