"""What a session's files say, read defensively: the records a poll returns and their fields.

The helpers here turn a parsed JSON value into a field of a record: a number that is not one,
not finite or absurd (beyond 2**62) is ``None`` (unknown); text is made
:func:`~profiler.text.printable` and cut; nested data (an event's, a summary) is cleaned the
same way. :class:`SessionMeta` reads ``meta.json`` (or, failing that, the directory name).
Plain files only: no torch, no pandas.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.records import CATEGORIES
from profiler.session.layout import parse_session_name
from profiler.text import printable

__all__ = [
    "HistoryPoint",
    "Predicted",
    "Prediction",
    "SessionEvent",
    "SessionMeta",
    "SessionView",
    "StepPoint",
    "bytes_tuple",
    "clean",
    "float_or_none",
    "int_or_none",
    "predicted_pairs",
    "str_or_none",
]

_CATEGORY_NAMES = tuple(str(c) for c in CATEGORIES)


#: Beyond this magnitude a number in a session file is absurd: the field is unknown.
_LIMIT = 2**62


def int_or_none(value: Any) -> int | None:
    """An integer field: ``None`` for a non-number, a non-finite or an absurd value."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -_LIMIT <= value <= _LIMIT else None
    if isinstance(value, float) and -_LIMIT <= value <= _LIMIT:  # False for NaN and inf
        return int(value)
    return None


def float_or_none(value: Any) -> float | None:
    """A float field: ``None`` for a non-number, a non-finite or an absurd value."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and -_LIMIT <= value <= _LIMIT:
        return float(value)
    return None


def str_or_none(value: Any, limit: int = 256) -> str | None:
    """A text field, made safe for a terminal (:func:`~profiler.text.printable`) and cut."""
    return printable(value, limit=limit) if isinstance(value, str) else None


def clean(value: Any, depth: int = 0) -> Any:
    """Parsed JSON (an event's data, a summary) with every string made :func:`printable`."""
    if isinstance(value, str):
        return printable(value, limit=1000)
    if depth > 16:
        return None
    if isinstance(value, dict):
        return {printable(k, limit=200): clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v, depth + 1) for v in value]
    return value


def bytes_tuple(value: Any) -> tuple[int, ...]:
    """Per-category bytes from ``{"weights": n, ...}`` in :data:`CATEGORIES` order (missing: 0)."""
    if not isinstance(value, Mapping):
        return _ZEROS
    try:
        values = _GET_ALL(value)  # the writer writes every category
    except KeyError:
        get = value.get
        values = tuple([get(name, 0) for name in _CATEGORY_NAMES])
    if set(map(type, values)) == _INTS and min(values) >= -_LIMIT and max(values) <= _LIMIT:
        return values
    return tuple(int_or_none(v) or 0 for v in values)  # rare: clean one by one


_ZEROS = (0,) * len(_CATEGORY_NAMES)
_GET_ALL = operator.itemgetter(*_CATEGORY_NAMES)
_INTS = {int}

#: Predicted bytes per category, in :data:`CATEGORIES` order (``None``: no prediction).
Predicted = tuple[tuple[str, int | None], ...]


def predicted_pairs(value: Any) -> Predicted:
    """``{"weights": n, ...}`` as (category, bytes or ``None``) pairs, for the known categories
    present (in :data:`CATEGORIES` order); ``()`` for anything but an object."""
    if not isinstance(value, Mapping):
        return ()
    return tuple((name, int_or_none(value.get(name))) for name in _CATEGORY_NAMES if name in value)


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """What ``meta.json`` (or, failing that, the directory name) says about a session."""

    id: str
    directory: str
    name: str
    pid: int | None
    host: str | None
    start_time: float | None
    rank: int | None = None
    world_size: int | None = None
    device: str | None = None
    device_index: int | None = None
    model_class: str | None = None
    param_count: int | None = None
    command: str | None = None
    mode: str | None = None
    capacity: int | None = None
    predicted: Predicted = ()
    schema: int | None = None
    boot_id: str | None = None  # the kernel boot and pid namespace it ran in (liveness)
    pid_ns: str | None = None
    local_rank: int | None = None
    job_id: str | None = None

    @classmethod
    def from_dict(cls, directory: Path, data: Mapping[str, Any]) -> SessionMeta:
        """Read the known fields of ``data``; anything missing or mistyped becomes ``None``."""
        fallback = cls.from_directory(directory)
        pairs = predicted_pairs(data.get("predicted"))
        return cls(
            id=directory.name,
            directory=str(directory),
            name=str_or_none(data.get("name")) or fallback.name,
            pid=int_or_none(data.get("pid")) or fallback.pid,
            host=str_or_none(data.get("host")) or fallback.host,
            start_time=float_or_none(data.get("start_time")) or fallback.start_time,
            rank=int_or_none(data.get("rank")),
            world_size=int_or_none(data.get("world_size")),
            device=str_or_none(data.get("device")),
            device_index=int_or_none(data.get("device_index")),
            model_class=str_or_none(data.get("model_class")),
            param_count=int_or_none(data.get("param_count")),
            command=str_or_none(data.get("command"), 2000),
            mode=str_or_none(data.get("mode")),
            capacity=int_or_none(data.get("capacity")),
            predicted=pairs,
            schema=int_or_none(data.get("v")),
            boot_id=str_or_none(data.get("boot_id"), 64),
            pid_ns=str_or_none(data.get("pid_ns"), 64),
            local_rank=int_or_none(data.get("local_rank")),
            job_id=str_or_none(data.get("job_id"), 256),
        )

    @classmethod
    def from_directory(cls, directory: Path) -> SessionMeta:
        """What the directory name says (:func:`~profiler.session.layout.parse_session_name`)."""
        parsed = parse_session_name(directory.name)
        if parsed is None:
            return cls(
                id=directory.name,
                directory=str(directory),
                name=printable(directory.name, limit=256),
                pid=None,
                host=None,
                start_time=None,
            )
        return cls(
            id=directory.name,
            directory=str(directory),
            name=printable(parsed.name, limit=256),
            pid=parsed.pid if parsed.pid <= _LIMIT else None,
            host=printable(parsed.host, limit=256),
            start_time=parsed.start_time,
        )


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One written sample: the total and the bytes per category at a moment."""

    time: float
    step: int
    total: int
    bytes: tuple[int, ...]
    peak: bool = False


@dataclass(frozen=True, slots=True)
class StepPoint:
    """One step end as the stream recorded it."""

    step: int
    time: float
    duration: float | None
    total: int
    peak: int
    bytes: tuple[int, ...]
    session_peak: int | None = None
    peak_bytes: tuple[int, ...] | None = None  # per category at the step's peak


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """An event other than a step end: a leak, an OOM, a suggestion, a warning."""

    time: float
    step: int
    kind: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prediction:
    """A ``prediction`` event: what the run predicts per category, and from what.

    ``basis`` says what was known: ``entry`` (the model and optimizer: weights, gradients,
    optimizer state), ``step`` (the first step end: the batch and sequence seen, so activations
    too), ``end`` (the run's end, from all it showed) or ``update`` (asked for by the program).
    """

    time: float
    step: int
    basis: str
    figures: Predicted
    batch: int | None = None
    seq: int | None = None

    @classmethod
    def from_event(cls, t: float, step: int, data: Mapping[str, Any]) -> Prediction | None:
        """The prediction an event's data holds; ``None`` without a ``predicted`` object."""
        figures = data.get("predicted")
        if not isinstance(figures, Mapping):
            return None
        return cls(
            t,
            step,
            str_or_none(data.get("basis"), 32) or "update",
            predicted_pairs(figures),
            int_or_none(data.get("batch")),
            int_or_none(data.get("seq")),
        )


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session at the moment of a poll: who, where it stands, its recent history."""

    meta: SessionMeta
    live: bool
    end_time: float | None
    status: str | None  # None while live; "ok", "error" or "killed" once ended
    last_update: float | None
    step: int | None
    phase: str | None
    module: str | None
    current: int | None
    bytes: tuple[int, ...] | None
    peak: int | None
    allocator: Mapping[str, Any] | None
    nvml: Mapping[str, Any] | None
    #: the written samples, oldest first (parsed when first read: :mod:`.history`)
    history: Sequence[HistoryPoint]
    steps: tuple[StepPoint, ...]
    events: tuple[SessionEvent, ...]
    modules: tuple[tuple[str, int], ...]
    summary: Mapping[str, Any] | None
    error: str | None
    #: lines and files passed over while polling (events, meta, summary, overlong lines)
    read_skipped: int = 0
    #: the newest ``prediction`` event, if the stream has one (older streams: only the meta's)
    prediction: Prediction | None = None

    @property
    def id(self) -> str:
        """The session directory's name: unique and sorted by start time."""
        return self.meta.id

    @property
    def predicted(self) -> Predicted:
        """The newest predictions: the last ``prediction`` event's, else ``meta.json``'s."""
        return self.prediction.figures if self.prediction is not None else self.meta.predicted

    @property
    def skipped(self) -> int:
        """Every line or file passed over: :attr:`read_skipped` and the history's bad lines."""
        return self.read_skipped + getattr(self.history, "skipped", 0)
