"""``mem.plot()``: the timeline stacked by category, the capacity line and the peak marked.

matplotlib is optional: it is imported when a plot is asked for, and a missing matplotlib is one
:class:`~profiler.errors.BackendUnavailable` with the install hint. A function of a
:class:`~profiler.run.RunView`, so a saved run (``profiler.load``) plots the same.
"""

from __future__ import annotations

from typing import Any

from profiler.errors import BackendUnavailable
from profiler.records import CATEGORIES
from profiler.run import RunView
from profiler.units import format_bytes

__all__ = ["COLORS", "plot"]

#: One colour per category, in CATEGORIES order (the dashboard's palette).
COLORS = ("#4c72b0", "#8172b2", "#dd8452", "#c44e52", "#55a868", "#da8bc3", "#937860", "#8c8c8c")


def plot(run: RunView, ax: Any = None, *, title: str | None = None) -> Any:
    """Draw ``run``'s timeline on ``ax`` (a new figure when ``None``); the axes.

    One stacked band per category (bytes in GiB/MiB, by sample), a dashed line at the device's
    capacity where it is known, a dotted line at the peak (which the ledger sees between samples)
    and the highest sample marked.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # matplotlib is optional
        raise BackendUnavailable(
            f"mem.plot() needs matplotlib ({error})", hint="pip install matplotlib"
        ) from None
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4))
    samples = list(run.samples)
    scale, unit = _scale(max([s.total for s in samples] + [run.device_total or 0, 1]))
    x = list(range(len(samples)))
    bands = [[s.bytes[i] / scale for s in samples] for i in range(len(CATEGORIES))]
    shown = [i for i, band in enumerate(bands) if any(band)]
    ax.stackplot(
        x,
        *[bands[i] for i in shown],
        labels=[str(CATEGORIES[i]) for i in shown],
        colors=[COLORS[i] for i in shown],
        alpha=0.9,
    )
    if run.device_total is not None:
        ax.axhline(run.device_total / scale, color="#c44e52", linestyle="--", linewidth=1)
        ax.annotate(f"capacity {format_bytes(run.device_total)}", (0, run.device_total / scale),
                    textcoords="offset points", xytext=(4, 4), fontsize=8, color="#c44e52")  # fmt: skip
    peak = run.peaks.total
    if samples:
        top = max(range(len(samples)), key=lambda i: samples[i].total)
        ax.plot([top], [samples[top].total / scale], marker="v", color="black")
    # the peak itself (the ledger sees it between samples, inside a forward or a backward)
    ax.axhline(peak / scale, color="black", linestyle=":", linewidth=1)
    ax.annotate(f"peak {format_bytes(peak)}", (len(samples) - 1 if samples else 0, peak / scale),
                textcoords="offset points", xytext=(-90, 4), fontsize=8)  # fmt: skip
    info = run.info
    ax.set_title(title or f"{info.name} · {info.mode} mode · {info.device} · {info.step} steps")
    ax.set_xlabel("sample (forward start/end, backward end, step end)")
    ax.set_ylabel(unit)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return ax


def _scale(largest: float) -> tuple[float, str]:
    if largest >= 1024**3:
        return 1024**3, "GiB"
    if largest >= 1024**2:
        return 1024**2, "MiB"
    return 1024, "KiB"
