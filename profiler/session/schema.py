"""The stream's schema v1: how records become the lines and files of a session directory.

The fields of every line and file are listed in :mod:`profiler.session.writer`. Sample and
step-end lines are built by hand (a %-format per record, no ``json.dumps``), because they are
written from the tracked program's hot path; events and whole files go through :func:`dumps`.
The output is compact JSON (no spaces), one object a line for the ``.jsonl`` files.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from typing import Any

from profiler.records import (
    CATEGORIES,
    AllocatorReading,
    Event,
    NvmlReading,
    Phase,
    Sample,
    StepRecord,
)

__all__ = [
    "CATEGORY_NAMES",
    "SCHEMA_VERSION",
    "dumps",
    "event_line",
    "module_json",
    "sample_line",
    "step_line",
]

#: Version of every stream file; bumped only for changes old readers would misread.
SCHEMA_VERSION = 1

#: The category names in their fixed order (the keys of every ``bytes`` object).
CATEGORY_NAMES = tuple(str(c) for c in CATEGORIES)

_PHASES = {phase: phase.value for phase in Phase}
_ALLOCATOR_FIELDS = AllocatorReading.__slots__
_NVML_FIELDS = NvmlReading.__slots__


def dumps(payload: Mapping[str, Any]) -> str:
    """``payload`` as compact JSON; records, sets and other odd values made writable."""
    return json.dumps(payload, default=_jsonable, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    """A JSON stand-in for values ``json`` cannot write (tuples of records, enums, paths)."""
    if hasattr(value, "__slots__") and hasattr(value, "__dataclass_fields__"):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _object_format(fields: tuple[str, ...]) -> str:
    """A %-format string for a JSON object with ``fields``, each value rendered by ``%s``."""
    return "{" + ",".join(f'"{name}":%s' for name in fields) + "}"


_BYTES_FORMAT = _object_format(CATEGORY_NAMES)
_ALLOCATOR_FORMAT = _object_format(_ALLOCATOR_FIELDS)
_NVML_FORMAT = _object_format(_NVML_FIELDS)
_ALLOCATOR_GET = operator.attrgetter(*_ALLOCATOR_FIELDS)
_NVML_GET = operator.attrgetter(*_NVML_FIELDS)


def _reading(value: Any, fmt: str, get: Callable[[Any], tuple[Any, ...]]) -> str:
    """A reading record (numbers or ``None``) as compact JSON, or ``null``."""
    if value is None:
        return "null"
    return (fmt % get(value)).replace("None", "null")


def _bytes_json(values: tuple[int, ...]) -> str:
    """Per-category bytes as a JSON object keyed by category name."""
    if len(values) == len(CATEGORY_NAMES):
        return _BYTES_FORMAT % values
    return (
        "{"
        + ",".join(f'"{n}":{int(v)}' for n, v in zip(CATEGORY_NAMES, values, strict=False))
        + "}"
    )


def module_json(cache: dict[str | None, str], module: str | None) -> str:
    """``module`` as a JSON string (or ``null``), remembered in ``cache`` for 4096 names."""
    text = cache.get(module)
    if text is None:
        text = json.dumps(module)
        if len(cache) < 4096:
            cache[module] = text
    return text


def sample_line(sample: Sample, is_peak: bool, module: str) -> str:
    """One ``samples.jsonl`` line; ``module`` is already JSON (:func:`module_json`)."""
    return (
        f'{{"v":{SCHEMA_VERSION},"t":{sample.time!r},"step":{int(sample.step)},'
        f'"phase":"{_PHASES.get(sample.phase) or sample.phase}","module":{module},'
        f'"bytes":{_bytes_json(sample.bytes)},'
        f'"total":{int(sample.total)},"peak":{"true" if is_peak else "false"},'
        f'"allocator":{_reading(sample.allocator, _ALLOCATOR_FORMAT, _ALLOCATOR_GET)},'
        f'"nvml":{_reading(sample.nvml, _NVML_FORMAT, _NVML_GET)}}}\n'
    )


def step_line(record: StepRecord, session_peak: int) -> str:
    """One ``events.jsonl`` line for a step end."""
    return (
        f'{{"v":{SCHEMA_VERSION},"t":{record.time!r},"step":{int(record.step)},'
        f'"kind":"step_end","message":"","data":{{"duration":{float(record.duration)!r},'
        f'"bytes":{_bytes_json(record.bytes)},"total":{int(record.total)},'
        f'"peak":{int(record.peak)},"peak_bytes":{_bytes_json(record.peak_bytes)},'
        f'"session_peak":{session_peak}}}}}\n'
    )


def event_line(event: Event) -> str:
    """One ``events.jsonl`` line for an event; data JSON cannot write is written as strings."""
    payload = {
        "v": SCHEMA_VERSION,
        "t": event.time,
        "step": event.step,
        "kind": str(event.kind),
        "message": event.message,
        "data": dict(event.data),
    }
    try:
        return dumps(payload) + "\n"
    except (TypeError, ValueError):
        payload["data"] = {k: str(v) for k, v in event.data.items()}
        return json.dumps(payload, separators=(",", ":")) + "\n"
