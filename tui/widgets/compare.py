"""Measured beside predicted, per category: the panel under the main screen's table.

Pure functions of a session (no Textual): two stacked bars on one scale (measured, predicted)
and a table with a column per category (measured, predicted, their difference). Measured is
what each category held at the last step's peak (the figure predictions of peak memory are
comparable with), or the latest sample's before the first step end.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from profiler.session.reader import SessionView
from profiler.units import format_bytes
from tui.snapshot import category_rows
from tui.widgets.render import CATEGORY_STYLES, stacked_bar

__all__ = ["compare_title", "render_category_compare"]

_BASIS = {
    "entry": "at entry (model and optimizer)",
    "step": "at the first step end",
    "end": "at the end",
    "update": "on request",
}


def compare_title(session: SessionView) -> str:
    """What the panel compares: measured when, predicted from what."""
    measured = "at the last step's peak" if session.steps else "now"
    prediction = session.prediction
    if prediction is not None:
        basis = _BASIS.get(prediction.basis, prediction.basis)
        shown = f"predicted {basis}"
        if prediction.batch is not None:
            shown += f", batch {prediction.batch}"
            if prediction.seq is not None:
                shown += f" × seq {prediction.seq}"
    elif any(v is not None for _, v in session.predicted):
        shown = "predicted (meta.json)"
    else:
        shown = "no predictions"
    return f"measured {measured} · {shown}"


def _stacked(label: str, values: Sequence[tuple[str, int]], scale: int, inner: int) -> Text:
    text = stacked_bar(label, values, scale, inner)
    text.append(f" {format_bytes(sum(v for _, v in values)):>11}")
    return text


def render_category_compare(session: SessionView, width: int = 100) -> RenderableType:
    """The bars and the per-category table of ``session``: measured beside predicted."""
    rows = category_rows(session)
    if not rows:
        return Text("no samples yet", style="dim")
    at_peak = any(peak is not None for _, _, peak, _ in rows)
    measured = [(name, (peak or 0) if at_peak else now) for name, now, peak, _ in rows]
    predicted = [(name, guess) for name, _, _, guess in rows if guess is not None]
    scale = max(sum(v for _, v in measured), sum(v for _, v in predicted), 1)
    inner = max(10, width - 23)
    lines: list[RenderableType] = [_stacked("measured", measured, scale, inner)]
    if predicted:
        lines.append(_stacked("predicted", predicted, scale, inner))
    table = Table(box=None, padding=(0, 1), show_edge=False, pad_edge=False)
    table.add_column("", min_width=9)
    for name, *_ in rows:
        table.add_column(Text(name, style=CATEGORY_STYLES.get(name, "white")), justify="right")
    guesses = dict(predicted)
    table.add_row("measured", *(format_bytes(v) for _, v in measured))
    table.add_row("predicted", *(format_bytes(guesses.get(name)) for name, _ in measured))
    table.add_row(
        Text("diff", style="dim"),
        *(
            Text("-" if name not in guesses else format_bytes(v - guesses[name], signed=True),
                 style="dim")
            for name, v in measured
        ),
    )  # fmt: skip
    return Group(*lines, table)
