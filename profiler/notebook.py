"""gpumem in notebooks: the notebook's name for the session, and rich HTML for the results.

A result left last in a Jupyter cell (``mem``, an ``Estimate``, a ``Leak``, a ``Suggestion``, an
``OomReport``) shows as a small table with a stacked bar: plain HTML with inline styles, no
network, no JavaScript, every text escaped (``html.escape``), so a module or model name cannot
inject markup. Each class's ``_repr_html_`` delegates to a function here; the functions read
their argument's public attributes only.

The session's name in a notebook (:func:`notebook_name`) is the notebook's file name without
``.ipynb``, where the kernel can tell it: VS Code's ``__vsc_ipynb_file__`` global,
``__session__`` (ipykernel copies it from ``JPY_SESSION_NAME``, which jupyter-server >= 2 sets to
the notebook's path), ``JPY_SESSION_NAME`` itself, or the ``jupyter_session`` field jupyter_client
writes into the kernel's connection file. Nothing is asked over the network. A kernel whose
notebook cannot be found is named ``notebook``.
"""

from __future__ import annotations

import html
import json
import os
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from profiler.plot import COLORS
from profiler.records import CATEGORIES
from profiler.units import format_bytes

__all__ = [
    "TrackerHtml",
    "estimate_html",
    "leak_html",
    "notebook_name",
    "oom_report_html",
    "suggestion_html",
    "tracker_html",
]

#: Colour of each category, in ``CATEGORIES`` order (the same as :func:`profiler.plot.plot`).
_COLOR = {str(c): COLORS[i] for i, c in enumerate(CATEGORIES)}
#: Colours of the parts that are not categories (overheads, a suggestion's saving, an OOM's
#: request); anything else is grey.
_PART_COLOR = {
    "peak after": "#4c72b0",
    "saves": "#b5dcb5",
    "requested": "#e41a1c",
    "CUDA context": "#bab0ac",
    "allocator margin": "#dcd6d3",
}
_OTHER_COLOR = "#999999"
_BOX = "font-family:sans-serif;font-size:0.9em;max-width:48em"
_CELL = "padding:1px 8px;text-align:right"
_FIRST = "padding:1px 8px;text-align:left"
_CONNECTION_LIMIT = 64 * 1024  # a kernel connection file is well under 1 KiB


# ============================================================================ the notebook's name


def notebook_name(
    namespace: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The running notebook's name (``analysis`` for ``analysis.ipynb``).

    Args:
        namespace: the notebook's globals (default: the running IPython kernel's user namespace).
        environ: the environment (default ``os.environ``).

    Returns:
        The name; ``"notebook"`` in a kernel whose notebook cannot be found; ``None`` outside a
        notebook kernel (unless ``namespace`` is given).
    """
    in_kernel = namespace is None
    if namespace is None:
        shell = _kernel_shell()
        if shell is None:
            return None
        namespace = getattr(shell, "user_ns", None) or {}
    env = os.environ if environ is None else environ
    for candidate in (
        namespace.get("__vsc_ipynb_file__"),
        namespace.get("__session__"),
        env.get("JPY_SESSION_NAME"),
    ):
        name = _stem(candidate)
        if name is not None:
            return name
    name = _stem(_connection_session()) if in_kernel else None
    return name or "notebook"


def _kernel_shell() -> Any:
    """IPython's shell when this process is a notebook kernel (ipykernel), else ``None``."""
    if "ipykernel" not in sys.modules:
        return None  # a plain script or a terminal IPython: named as usual
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell if shell is not None and hasattr(shell, "kernel") else None


def _connection_session(path: str | None = None) -> str | None:
    """The ``jupyter_session`` field of this kernel's connection file (a local file; ``path``
    in place of the running kernel's)."""
    try:
        if path is None:
            from ipykernel.connect import get_connection_file

            path = get_connection_file()
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO would block the kernel on open
        with open(path, encoding="utf-8") as file:
            info = json.loads(file.read(_CONNECTION_LIMIT))
    except Exception:  # noqa: BLE001 - no connection file: no name from it
        return None
    value = info.get("jupyter_session") if isinstance(info, dict) else None
    return value if isinstance(value, str) else None


def _stem(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    base = os.path.basename(value.strip().rstrip("/\\").replace("\\", "/"))
    base = base.removesuffix(".ipynb").strip()
    return base or None


# ============================================================================ building blocks


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _bar(parts: Iterable[tuple[str, int]], capacity: int | None = None) -> str:
    """A stacked bar of ``(label, bytes)`` parts, as shares of ``capacity`` (or of their sum);
    parts that go over the capacity get a black line where it ends."""
    shown = [(label, int(value)) for label, value in parts if value and value > 0]
    total = sum(value for _, value in shown)
    scale = max(capacity or 0, total)
    if scale <= 0:
        return ""
    cells = "".join(
        f'<div title="{_e(label)}: {_e(format_bytes(value))}" style="width:{100 * value / scale:.3f}%;'
        f'background:{_COLOR.get(label) or _PART_COLOR.get(label, _OTHER_COLOR)}"></div>'
        for label, value in shown
    )
    if capacity is not None and 0 < capacity < total:
        cells += (
            f'<div title="capacity: {_e(format_bytes(capacity))}" style="position:absolute;'
            f'left:{100 * capacity / scale:.3f}%;top:-3px;bottom:-3px;border-left:2px solid #000">'
            "</div>"
        )
    return (
        '<div class="gpumem-bar" style="display:flex;position:relative;height:14px;margin:4px 0;'
        f'border:1px solid #999;background:#f4f4f4">{cells}</div>'
    )


def _swatch(label: str) -> str:
    """The label after a square of its colour in the bar (escaped)."""
    color = _COLOR.get(label) or _PART_COLOR.get(label)
    if color is None:
        return _e(label)
    return (
        f'<span style="display:inline-block;width:10px;height:10px;background:{color};'
        f'margin-right:4px"></span>{_e(label)}'
    )


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_first: bool = False) -> str:
    """A table. An ``int`` cell is a byte count (shown in units, exact bytes on hover), ``None``
    is ``-``; text is escaped here (the first cell is taken as HTML with ``raw_first``)."""
    header = "".join(
        f'<th style="{_FIRST if i == 0 else _CELL}">{_e(h)}</th>' for i, h in enumerate(head)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            style = _FIRST if i == 0 else _CELL
            if isinstance(cell, int) and not isinstance(cell, bool):
                cells.append(
                    f'<td style="{style}" title="{cell} bytes">{_e(format_bytes(cell))}</td>'
                )
                continue
            text = "-" if cell is None else cell if raw_first and i == 0 else _e(cell)
            cells.append(f'<td style="{style}">{text}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="gpumem-table"><tr>{header}</tr>{"".join(body)}</table>'


def _box(title: str, *parts: str) -> str:
    return f'<div class="gpumem" style="{_BOX}"><div>{title}</div>{"".join(parts)}</div>'


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# ============================================================================ the renderers


def tracker_html(run: Any) -> str:
    """A tracked run (:class:`~profiler.run.RunView`): the bar at the peak, per-category table."""
    info, peaks = run.info, run.peaks
    labels = [str(c) for c in CATEGORIES]
    predicted = run.predicted
    capacity = run.device_total
    title = (
        f"<b>gpumem</b>: {_e(info.name)} · {_e(info.mode)} mode · {_e(info.device)} · "
        f"{_e(_count(info.step, 'step'))} · peak <b>{_e(format_bytes(peaks.total))}</b>"
    )
    if capacity is not None:
        title += f" of {_e(format_bytes(capacity))}"
    if run.failure is not None:
        title += ' · <b style="color:#c44e52">out of memory</b>'
    rows = [
        (
            _swatch(label),
            peaks.current[i],
            peaks.by_category[i],
            peaks.at_peak[i],
            predicted.get(CATEGORIES[i]),
        )
        for i, label in enumerate(labels)
    ]
    rows.append(("total", sum(peaks.current), "", peaks.total, ""))
    return _box(
        title,
        _bar(zip(labels, peaks.at_peak, strict=True), capacity),
        _table(("category", "current", "peak", "at peak", "predicted"), rows, raw_first=True),
    )


class TrackerHtml:
    """Gives a run view (the tracker) its notebook HTML: :func:`tracker_html`."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        return tracker_html(self)


def estimate_html(estimate: Any) -> str:
    """An :class:`~profiler.predict.Estimate`: the predicted bytes per category and overheads."""
    categories = {str(c): int(b) for c, b in dict(estimate.categories).items()}
    overheads = [(str(o.name), int(o.bytes)) for o in getattr(estimate, "overheads", ())]
    title = (
        f"<b>gpumem estimate</b>: {_e(estimate.model)} · {_e(estimate.mode)} · "
        f"{_e(estimate.precision)} · batch {_e(estimate.batch)} × seq {_e(estimate.seq)} · "
        f"total <b>{_e(format_bytes(estimate.total))}</b>"
    )
    rows: list[tuple[str, int]] = [(_swatch(k), v) for k, v in categories.items()]
    rows += [(_e(name), value) for name, value in overheads]
    rows.append(("total", int(estimate.total)))
    notes = "".join(f"<li>{_e(note)}</li>" for note in getattr(estimate, "notes", ()))
    return _box(
        title,
        _bar([*categories.items(), *overheads]),
        _table(("category", "predicted"), rows, raw_first=True),
        f'<ul style="margin:2px 0">{notes}</ul>' if notes else "",
    )


def leak_html(leak: Any) -> str:
    """A :class:`~profiler.leaks.Leak`: what grows, how fast, where, and the fix."""
    category = str(leak.category)
    rows: list[tuple[str, Any]] = [
        ("grows per step", leak.bytes_per_step),
        ("category", category),
        ("held at", leak.site or "an unknown line"),
        ("pattern", str(leak.pattern).replace("_", " ")),
    ]
    if leak.source:
        rows.append(("source", leak.source))
    if leak.capacity is not None and leak.capacity_step is not None:
        rows.append((f"reaches at step {leak.capacity_step}", leak.capacity))
    return _box(
        f'<b style="color:#c44e52">memory leak</b>: {_swatch(category)} grows '
        f"<b>{_e(format_bytes(leak.bytes_per_step))}</b> per step",
        _table(("", ""), rows),
        f"<div>fix: {_e(leak.suggestion)}</div>",
    )


def suggestion_html(suggestion: Any) -> str:
    """A :class:`~profiler.advice.Suggestion`: the change, what it saves, whether it then fits."""
    fits = {True: "fits", False: "does not fit", None: "not known"}[suggestion.fits]
    rows: list[tuple[str, Any]] = [
        (_swatch("saves"), suggestion.saves_bytes),
        (_swatch("peak after"), suggestion.peak_after),
        ("then", fits),
        ("measured", "replayed on fake tensors" if suggestion.verified else "estimate"),
    ]
    rows += [(_e(key), str(value)) for key, value in dict(suggestion.params).items()]
    after = suggestion.peak_after
    bar = ""
    if after is not None:
        bar = _bar([("peak after", after), ("saves", suggestion.saves_bytes)])
    detail = f"<div>{_e(suggestion.detail)}</div>" if suggestion.detail else ""
    return _box(
        f"<b>suggestion</b>: {_e(suggestion.title)}",
        bar,
        _table(("", ""), rows, raw_first=True),
        detail,
    )


def oom_report_html(report: Any) -> str:
    """An :class:`~profiler.report.OomReport`: the breakdown at the failure and the top fixes."""
    rows = [
        (
            _swatch(str(row.category)),
            row.current,
            row.peak,
            row.at_peak,
            row.predicted,
        )
        for row in report.breakdown
    ]
    title = (
        f'<b style="color:#c44e52">out of memory</b> on {_e(report.device)}: {_e(report.message)}'
    )
    where = [
        (_swatch("requested"), report.requested),
        ("free", report.free),
        ("capacity", report.capacity),
        (
            _e("step · phase · module"),
            " · ".join(_text(v) for v in (report.step, report.phase, report.module)),
        ),
    ]
    tensors = [
        (_text(t.module), t.nbytes, str(t.category), _text(t.shape and tuple(t.shape)))
        for t in report.tensors[:5]
    ]
    fixes = [
        (
            s.title,
            s.saves_bytes,
            "yes" if s.fits else "no" if s.fits is False else "-",
        )
        for s in report.suggestions[:5]
    ]
    parts = [
        _bar(
            [*((str(r.category), r.current) for r in report.breakdown)]
            + [("requested", report.requested or 0)],
            report.capacity,
        ),
        _table(("category", "current", "peak", "at peak", "predicted"), rows, raw_first=True),
        _table(("", ""), where, raw_first=True),
    ]
    if tensors:
        parts.append(_table(("largest tensors", "bytes", "category", "shape"), tensors))
    if fixes:
        parts.append(_table(("fix", "saves", "fits"), fixes))
    if report.path is not None:
        parts.append(f"<div>report: {_e(report.path)}</div>")
    return _box(title, *parts)
