"""A pytest marker that keeps a test's memory in check: ``@pytest.mark.gpumem(...)``.

::

    @pytest.mark.gpumem(max_peak="2 GB", max_category={"activations": "1 GB"}, no_leaks=True)
    def test_training_step():
        ...

The test body runs inside ``track_memory`` (no session stream); the test fails, with the
breakdown in the message, when its peak or a category's peak goes over its limit, or when a leak
was confirmed and ``no_leaks`` is set. Options: ``max_peak``, ``max_category`` (category →
limit), ``no_leaks``, ``mode``, ``device`` (by default CUDA if it is initialised, else the CPU).
Limits are sizes as ``gpumem`` reads them ("2 GB", "512MiB", or bytes). Registered through the
``pytest11`` entry point, so installing gpumem makes the marker available.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from profiler.errors import GpumemError, UsageError
from profiler.records import CATEGORIES, Category
from profiler.units import format_bytes, parse_bytes

__all__ = ["MARKER", "Limits"]

MARKER = "gpumem"


@dataclass(frozen=True)
class Limits:
    """What a marked test may use."""

    max_peak: int | None = None
    max_category: Mapping[Category, int] = field(default_factory=dict)
    no_leaks: bool = False
    mode: str = "auto"
    device: Any = None

    @classmethod
    def from_marker(cls, marker: pytest.Mark) -> Limits:
        """The limits a ``gpumem`` marker names (a :class:`UsageError` for a bad one)."""
        if marker.args:
            raise UsageError("@pytest.mark.gpumem takes keyword arguments only")
        options = dict(marker.kwargs)
        unknown = set(options) - {"max_peak", "max_category", "no_leaks", "mode", "device"}
        if unknown:
            raise UsageError(f"@pytest.mark.gpumem: unknown option {sorted(unknown)[0]!r}")
        peak = options.get("max_peak")
        categories = {}
        for name, limit in dict(options.get("max_category") or {}).items():
            try:
                category = Category(name)
            except ValueError:
                known = ", ".join(str(c) for c in CATEGORIES)
                raise UsageError(f"unknown category {name!r} (known: {known})") from None
            categories[category] = parse_bytes(limit)
        return cls(
            max_peak=None if peak is None else parse_bytes(peak),
            max_category=categories,
            no_leaks=bool(options.get("no_leaks", False)),
            mode=str(options.get("mode", "auto")),
            device=options.get("device"),
        )

    def problems(self, mem: Any) -> list[str]:
        """What the run ``mem`` went over, in words (empty: within every limit)."""
        found = []
        peaks = mem.peaks
        if self.max_peak is not None and peaks.total > self.max_peak:
            found.append(
                f"peak {format_bytes(peaks.total)} > max_peak {format_bytes(self.max_peak)}"
            )
        index = {c: i for i, c in enumerate(CATEGORIES)}
        for category, limit in self.max_category.items():
            value = peaks.by_category[index[category]]
            if value > limit:
                found.append(f"{category} peak {format_bytes(value)} > {format_bytes(limit)}")
        if self.no_leaks:
            found.extend(f"leak: {leak.describe()}" for leak in mem.leaks())
        return found


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker."""
    config.addinivalue_line(
        "markers",
        "gpumem(max_peak=None, max_category=None, no_leaks=False, mode='auto', device=None): "
        "fail the test when its memory goes over these limits (gpumem)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """Run a marked test inside ``track_memory`` and check its limits."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return (yield)
    try:
        limits = Limits.from_marker(marker)
    except GpumemError as error:
        pytest.fail(f"gpumem: {error.one_line()}", pytrace=False)
    from profiler.tracker import track_memory  # torch: only for a marked test

    with track_memory(
        name=item.name, stream=False, leaks=limits.no_leaks, mode=limits.mode, device=limits.device
    ) as mem:
        result = yield
    problems = limits.problems(mem)
    if problems:
        pytest.fail("gpumem: " + "; ".join(problems) + "\n\n" + mem.table(), pytrace=False)
    return result
