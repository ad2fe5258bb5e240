"""Text from elsewhere made safe for a terminal: the one sanitiser every display goes through.

A session file, NVML's process list or another user's command line may hold anything: escape
sequences that set a terminal's title, leave the alternate screen or clear it; bidirectional
overrides that reorder what is shown; lone surrogates that a UTF-8 terminal cannot encode.
:func:`printable` replaces each such character by a visible escape (``ESC`` becomes ``\\x1b``,
U+202E becomes ``\\u202e``), so what was there is still readable and nothing reaches the
terminal as a control. The Rich and Textual layers are handed the result as plain text
(``rich.text.Text``, ``markup=False``), never as markup, so ``[/]`` in a name is just text.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls (tab and newline handled apart), DEL, C1 controls, zero-width and bidirectional
# formatting characters, the byte-order mark, and lone surrogates.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\ud800-\udfff]"
)
_NEWLINES = re.compile("[\t\n]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, limit: int | None = None, newlines: bool = False) -> str:
    """``text`` (made a string) with every control character replaced by a visible escape.

    Args:
        text: anything; ``None`` and non-strings are shown by ``str``.
        limit: cut to at most this many characters (an ellipsis marks the cut).
        newlines: keep newlines and tabs (multi-line text); by default they are escaped too,
            so that the result is one line.
    """
    value = text if isinstance(text, str) else str(text)
    if limit is not None and len(value) > limit:
        value = value[: max(0, limit - 1)] + "…"
    if _UNSAFE.search(value) is not None:
        value = _UNSAFE.sub(_escape, value)
    if not newlines and _NEWLINES.search(value) is not None:
        value = _NEWLINES.sub(_escape, value)
    return value
