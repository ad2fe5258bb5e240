"""Exporters: the local sessions' stream served to other tools (Prometheus)."""

from __future__ import annotations

from profiler.export.prometheus import SessionCollector, serve

__all__ = ["SessionCollector", "serve"]
