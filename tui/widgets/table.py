"""A light table for live data: plain-text cells, one cached strip per row, a fixed header.

Textual's DataTable re-renders every visible cell through Rich whenever any cell changes, which
costs tens of milliseconds a refresh at 200 rows. Here a row is one string (cells padded to the
column widths) drawn as one segment, cached by its content, so a refresh that changes a few
figures costs a few string joins. Keys: up/down, page up/down, home/end; enter posts
:class:`RowTable.RowChosen`, a move to another row :class:`RowTable.RowHighlighted`. The cursor follows the row's identity (a pid, a session id) when
rows move.
"""

from __future__ import annotations

from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

__all__ = ["Column", "Row", "RowTable"]

#: (label, justify): justify is "left" or "right".
Column = tuple[str, str]
#: (identity, cell texts, style name: "" or "dim").
Row = tuple[str, tuple[str, ...], str]


class RowTable(ScrollView, can_focus=True):
    """A scrolling table of text rows with a row cursor; subclasses set ``COLUMNS``."""

    COLUMNS: ClassVar[tuple[Column, ...]] = ()
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rowtable--header",
        "rowtable--cursor",
        "rowtable--cursor-blurred",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "up", show=False),
        Binding("down", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "cursor(-1000000000)", "first", show=False),
        Binding("end", "cursor(1000000000)", "last", show=False),
        Binding("enter", "choose", "open", show=False),
    ]

    cursor_row: reactive[int] = reactive(0, repaint=False)

    class RowChosen(Message):
        """Enter was pressed on a row."""

        def __init__(self, table: RowTable, identity: str) -> None:
            super().__init__()
            self.table = table
            self.identity = identity

    class RowHighlighted(Message):
        """The row under the cursor is another one (``identity`` ``None``: no rows)."""

        def __init__(self, table: RowTable, identity: str | None) -> None:
            super().__init__()
            self.table = table
            self.identity = identity

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[Row] = []
        self._widths: list[int] = [len(label) for label, _ in self.COLUMNS]
        self._lines: dict[int, tuple[tuple[object, ...], Strip]] = {}
        self._styles: dict[str, Style] | None = None
        self._highlighted: str | None = None

    def _check_highlight(self) -> None:
        """Post :class:`RowHighlighted` when the identity under the cursor changed."""
        identity = self.selected_identity()
        if identity != self._highlighted:
            self._highlighted = identity
            self.post_message(self.RowHighlighted(self, identity))

    def _style(self, name: str) -> Style:
        """The base, header, cursor and dim styles, looked up once per style change."""
        if self._styles is None:
            base = self.rich_style
            self._styles = {
                "base": base,
                "dim": base + Style(dim=True),
                "header": self.get_component_rich_style("rowtable--header"),
                "cursor": base + self.get_component_rich_style("rowtable--cursor"),
                "blurred": base + self.get_component_rich_style("rowtable--cursor-blurred"),
            }
        return self._styles[name]

    def notify_style_update(self) -> None:
        self._styles = None
        self._lines.clear()
        super().notify_style_update()

    # -- data ----------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        """How many rows the table holds."""
        return len(self.rows)

    def cells(self, column: int) -> list[str]:
        """The texts of one column, top to bottom."""
        return [cells[column] for _, cells, _ in self.rows]

    def selected_identity(self) -> str | None:
        """The identity of the row under the cursor."""
        if 0 <= self.cursor_row < len(self.rows):
            return self.rows[self.cursor_row][0]
        return None

    def sync_rows(self, rows: list[Row]) -> None:
        """Show ``rows``; nothing is redrawn when they are what is shown."""
        if rows == self.rows:
            return
        selected = self.selected_identity()
        widths = [len(label) for label, _ in self.COLUMNS]
        for _, cells, _ in rows:
            for i, text in enumerate(cells):
                if len(text) > widths[i]:
                    widths[i] = len(text)
        if widths != self._widths:
            self._widths = widths
            self._lines.clear()
        self.rows = rows
        self.virtual_size = Size(sum(widths) + 2 * len(widths), len(rows) + 1)
        cursor = self.cursor_row
        if selected is not None:
            for index, (identity, _, _) in enumerate(rows):
                if identity == selected:
                    cursor = index
                    break
        self.cursor_row = max(0, min(cursor, len(rows) - 1))
        self._check_highlight()
        self.refresh()

    # -- drawing -------------------------------------------------------------------------------

    def _text(self, cells: tuple[str, ...]) -> str:
        parts = []
        for (_, justify), width, text in zip(self.COLUMNS, self._widths, cells, strict=False):
            parts.append(text.rjust(width) if justify == "right" else text.ljust(width))
        return " " + "  ".join(parts) + " "

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        if y == 0:
            labels = tuple(label for label, _ in self.COLUMNS)
            style = self._style("header")
            strip = Strip([Segment(self._text(labels), style)])
            return strip.crop_extend(scroll_x, scroll_x + width, style)
        index = scroll_y + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, self._style("base"))
        identity, cells, dim = self.rows[index]
        is_cursor = index == self.cursor_row
        if is_cursor:
            style = self._style("cursor" if self.has_focus else "blurred")
        else:
            style = self._style("dim" if dim else "base")
        key = (cells, dim, is_cursor, self.has_focus, scroll_x, width)
        cached = self._lines.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        strip = Strip([Segment(self._text(cells), style)]).crop_extend(
            scroll_x, scroll_x + width, style
        )
        if len(self._lines) > 512:
            self._lines.clear()
        self._lines[index] = (key, strip)
        return strip

    # -- cursor --------------------------------------------------------------------------------

    def watch_cursor_row(self, old: int, new: int) -> None:
        visible = max(1, self.size.height - 1)
        top = self.scroll_offset.y
        if new < top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= top + visible:
            self.scroll_to(y=new - visible + 1, animate=False, immediate=True)
        self._check_highlight()
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        """Move the cursor ``delta`` rows (clamped)."""
        if self.rows:
            self.cursor_row = max(0, min(len(self.rows) - 1, self.cursor_row + delta))

    def action_page(self, direction: int) -> None:
        """Move the cursor one screen up or down."""
        self.action_cursor(direction * max(1, self.size.height - 2))

    def action_choose(self) -> None:
        """Post :class:`RowChosen` for the row under the cursor."""
        identity = self.selected_identity()
        if identity is not None:
            self.post_message(self.RowChosen(self, identity))

    def on_click(self, event: Click) -> None:
        index = self.scroll_offset.y + event.y - 1
        if event.y >= 1 and 0 <= index < len(self.rows):
            self.cursor_row = index
            if event.chain >= 2:
                self.action_choose()

    def on_focus(self) -> None:
        self._styles = None
        self.refresh()

    def on_blur(self) -> None:
        self._styles = None
        self.refresh()
