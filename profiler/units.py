"""Bytes to text and text to bytes: the one place where units appear."""

from __future__ import annotations

import re

from profiler.errors import UsageError

__all__ = ["GB", "GiB", "KiB", "MiB", "format_bytes", "format_gb", "parse_bytes"]

KiB = 1024
MiB = 1024**2
GiB = 1024**3
GB = 1000**3

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def format_bytes(n: int | float | None, *, signed: bool = False) -> str:
    """Render a byte count with binary units: ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ("+" if signed and n > 0 else "")
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{int(value)} B"
            return f"{sign}{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_gb(n: int | float) -> str:
    """Decimal gigabytes with two decimals, as model cards and the seed quote them: ``'14.00'``."""
    return f"{n / GB:.2f}"


def parse_bytes(text: str | int | float) -> int:
    """Parse ``"24GB"``, ``"80 GiB"``, ``"512MiB"`` or a plain number of bytes.

    Decimal units (GB) are powers of 1000, binary ones (GiB) powers of 1024.

    Raises:
        UsageError: the text is not a positive size.
    """
    if isinstance(text, bool):
        raise UsageError(f"not a size: {text!r}")
    if isinstance(text, int | float):
        value = float(text)
        unit = ""
    else:
        match = _PATTERN.match(text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise UsageError(
                f"not a size: {text!r}", hint="write a number with a unit, like 24GB or 80GiB"
            )
        value = float(match.group(1))
        unit = match.group(2).lower()
    result = int(value * _UNITS[unit])
    if result <= 0:
        raise UsageError(f"size must be positive, got {text!r}")
    return result
