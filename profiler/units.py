"""Bytes to text and text to bytes: the one place where units appear."""

from __future__ import annotations

import math
import re

from profiler.errors import UsageError

__all__ = ["GB", "MAX_SIZE", "GiB", "KiB", "MiB", "format_bytes", "format_gb", "parse_bytes"]

#: The largest size :func:`parse_bytes` accepts (1 EiB; no device comes near it).
MAX_SIZE = 1024**6

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
    if n is None or not math.isfinite(n):
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
    if not math.isfinite(n):
        return "-"
    return f"{n / GB:.2f}"


def parse_bytes(text: str | int | float) -> int:
    """Parse ``"24GB"``, ``"80 GiB"``, ``"512MiB"`` or a plain number of bytes.

    Decimal units (GB) are powers of 1000, binary ones (GiB) powers of 1024.

    Raises:
        UsageError: the text is not a positive, finite size of at most :data:`MAX_SIZE` bytes
            (``nan``, ``inf`` and ``1e999B`` included).
    """
    shown = repr(text if not isinstance(text, str) or len(text) <= 40 else text[:40] + "…")
    shown = shown if len(shown) <= 44 else shown[:40] + "…"
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise UsageError(f"not a size: {shown}")
    if isinstance(text, int):
        value: float | int = text
        unit = ""
    elif isinstance(text, float):
        value = text
        unit = ""
    else:
        match = _PATTERN.match(text) if len(text) <= 64 else None
        if match is None or match.group(2).lower() not in _UNITS:
            raise UsageError(
                f"not a size: {shown}", hint="write a number with a unit, like 24GB or 80GiB"
            )
        value = float(match.group(1))
        unit = match.group(2).lower()
    if isinstance(value, int) and not -MAX_SIZE <= value <= MAX_SIZE:
        raise UsageError(f"size out of range: {shown}", hint="at most 1 EiB")
    if not math.isfinite(value) or value * _UNITS[unit] > MAX_SIZE:
        raise UsageError(f"size out of range: {shown}", hint="at most 1 EiB, a finite number")
    result = int(value * _UNITS[unit])
    if result <= 0:
        raise UsageError(f"size must be positive, got {shown}")
    return result
