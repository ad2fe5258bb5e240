"""The OOM post-mortem report as data: a frozen dataclass tree that round-trips through JSON.

Plain data only: the report is built by :mod:`profiler.report.build`, written and read by
:mod:`profiler.report.store` and rendered by :mod:`profiler.report.render`; none of them is
imported here.

Every figure is ``int`` bytes; a figure that could not be measured is ``None``. The JSON carries
``"schema": SCHEMA_VERSION``; :func:`report_from_json` rejects a newer schema, a torn or corrupt
file and a missing field with a one-line :class:`~profiler.errors.StreamError`, and ignores
unknown fields (so an older reader survives a newer writer that only adds fields).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.advice import Suggestion
from profiler.errors import StreamError

__all__ = [
    "SCHEMA_VERSION",
    "CategoryRow",
    "Fragmentation",
    "OomReport",
    "ProcessRow",
    "RunInfo",
    "TensorRow",
    "TimelinePoint",
    "WaterfallRow",
    "report_from_dict",
    "report_from_json",
    "report_to_dict",
    "report_to_json",
]

#: Version of the report JSON; bumped only for changes an older reader would misread.
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class CategoryRow:
    """One category: bytes at the failure, its own peak, its share of the peak, and the forecast.

    ``gap`` is the likely cause of the difference between the peak and the forecast, in words.
    """

    category: str
    current: int
    peak: int
    at_peak: int
    predicted: int | None = None
    gap: str | None = None


@dataclass(frozen=True, slots=True)
class WaterfallRow:
    """One line of the device waterfall; ``level`` is its depth in the tree (0 = the device)."""

    label: str
    bytes: int | None
    level: int = 0


@dataclass(frozen=True, slots=True)
class TensorRow:
    """One live storage at the failure, largest first."""

    nbytes: int
    category: str
    module: str | None = None
    step: int | None = None
    site: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """Another process holding memory on the same GPU."""

    pid: int
    gpu_memory: int | None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Fragmentation:
    """The caching allocator's view at the failure: what it held beyond the live tensors."""

    reserved: int
    allocated: int
    inactive_split: int | None = None
    largest_free_block: int | None = None
    segments: int | None = None

    @property
    def cached_free(self) -> int:
        """Bytes the allocator holds that no tensor uses."""
        return max(self.reserved - self.allocated, 0)


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One sample leading up to the failure: bytes per category in ``categories`` order."""

    time: float
    step: int
    phase: str
    bytes: tuple[int, ...]
    total: int


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the tracker learnt about the run (``None`` where it could not tell)."""

    model_class: str | None = None
    param_count: int | None = None
    trainable_param_count: int | None = None
    optimizer_class: str | None = None
    batch: int | None = None
    seq: int | None = None
    autocast_dtype: str | None = None
    checkpointing: bool | None = None
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class OomReport:
    """Everything known at an out-of-memory failure, and what would make the run fit.

    ``path`` is where the JSON was written (the Markdown and HTML lie next to it, same stem); it is
    not part of the JSON.
    """

    created: float
    simulated: bool
    message: str
    device: str
    capacity: int | None
    requested: int | None
    free: int | None
    total: int | None
    phase: str | None = None
    step: int | None = None
    module: str | None = None
    gpu_name: str | None = None
    peak: int | None = None
    run: RunInfo = field(default_factory=RunInfo)
    categories: tuple[str, ...] = ()
    breakdown: tuple[CategoryRow, ...] = ()
    waterfall: tuple[WaterfallRow, ...] = ()
    tensors: tuple[TensorRow, ...] = ()
    fragmentation: Fragmentation | None = None
    processes: tuple[ProcessRow, ...] | None = None
    timeline: tuple[TimelinePoint, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()
    snapshot: str | None = None
    notes: tuple[str, ...] = ()
    schema: int = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False)

    def paths(self) -> dict[str, Path]:
        """The written files by format (``json``, ``md``, ``html``); empty before writing."""
        if self.path is None:
            return {}
        return {fmt: self.path.with_suffix(f".{fmt}") for fmt in ("json", "md", "html")}

    @property
    def predicted_total(self) -> int | None:
        """The forecast total over the categories that have one (``None`` if none has)."""
        values = [row.predicted for row in self.breakdown if row.predicted is not None]
        return sum(values) if values else None

    def _repr_html_(self) -> str:
        """The post-mortem as HTML for notebooks (:func:`profiler.notebook.oom_report_html`)."""
        from profiler.notebook import oom_report_html

        return oom_report_html(self)


# -- JSON ------------------------------------------------------------------------------------

_NOT_IN_JSON = frozenset({"path"})


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _encode(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in _NOT_IN_JSON
        }
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:  # NaN has no JSON spelling
        return None
    return value


def report_to_dict(report: OomReport) -> dict[str, Any]:
    """The report as plain JSON-ready data."""
    return typing.cast(dict[str, Any], _encode(report))


def report_to_json(report: OomReport, *, indent: int | None = 1) -> str:
    """The report as JSON text."""
    return json.dumps(report_to_dict(report), indent=indent, allow_nan=False)


class _Invalid(Exception):
    """A field of the wrong type or missing; ``where`` is its dotted path."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of ``cls`` (from the module that defines it)."""
    hints = _HINTS_CACHE.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS_CACHE[cls] = hints
    return hints


def _decode_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _Invalid(where, "is null")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _decode(arg, value, where)
        except _Invalid as exc:
            errors.append(exc)
    raise errors[0]


def _decode_dataclass(tp: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _Invalid(where, f"expected an object, got {type(value).__name__}")
    kwargs = {}
    hints = _hints(tp)
    for f in dataclasses.fields(tp):
        if f.name in _NOT_IN_JSON:
            continue
        if f.name not in value:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise _Invalid(f"{where}.{f.name}", "missing")
        kwargs[f.name] = _decode(hints[f.name], value[f.name], f"{where}.{f.name}")
    return typing.cast(Any, tp)(**kwargs)


def _decode_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(where, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(where, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(where, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid(where, f"expected a string, got {value!r}")
        return value
    raise _Invalid(where, f"cannot read a {tp!r}")  # pragma: no cover - a schema bug


def _decode(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``, checked; ``where`` is its dotted path."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _decode_union(args, value, where)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise _Invalid(where, f"expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping) or origin is typing.Mapping:
        if not isinstance(value, dict):
            raise _Invalid(where, f"expected an object, got {type(value).__name__}")
        return dict(value)
    return _decode_scalar(tp, value, where)


def report_from_dict(data: Any, *, source: str = "report") -> OomReport:
    """Rebuild a report from :func:`report_to_dict` data.

    Raises:
        StreamError: not a report, a newer schema, or a field missing or of the wrong type.
    """
    if not isinstance(data, dict):
        raise StreamError(f"{source} is not a gpumem OOM report (not a JSON object)")
    schema = data.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise StreamError(f"{source} is not a gpumem OOM report (no schema version)")
    if schema > SCHEMA_VERSION:
        raise StreamError(
            f"{source} has report schema {schema}, newer than this gpumem reads ({SCHEMA_VERSION})",
            hint="upgrade gpumem",
        )
    try:
        report = _decode(OomReport, data, "report")
    except _Invalid as exc:
        raise StreamError(
            f"{source} is incomplete or corrupt ({exc})", hint="re-run to write a new report"
        ) from None
    except (TypeError, ValueError) as exc:
        raise StreamError(f"{source} is corrupt ({exc})") from None
    return typing.cast(OomReport, report)


def report_from_json(text: str, *, source: str = "report") -> OomReport:
    """Parse report JSON text.

    Raises:
        StreamError: empty, torn (a partial write) or corrupt text, or not a report.
    """
    if not text.strip():
        raise StreamError(f"{source} is empty", hint="the run may have died while writing it")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StreamError(
            f"{source} is not valid JSON (torn or corrupt: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno})",
            hint="re-run to write a new report",
        ) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise StreamError(f"{source} is not valid JSON ({type(exc).__name__})") from None
    return report_from_dict(data, source=source)
