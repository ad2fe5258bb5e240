"""What a run measured, as the user reads it: DataFrames, the text table, the summary.

Plain functions of a :class:`~profiler.run.RunView`, so a live tracker, a finished one and an
offline reader all give the same views. pandas is imported only when a DataFrame is asked for.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from profiler.records import CATEGORIES
from profiler.run import RunView
from profiler.units import format_bytes

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "breakdown",
    "compare_context",
    "metrics",
    "modules",
    "summary",
    "table",
    "timeline",
    "top_modules",
]


def breakdown(run: RunView) -> pd.DataFrame:
    """One row per category: bytes current, peak (of that category), at_peak, predicted."""
    import pandas as pd

    peaks = run.peaks
    predicted = run.predicted
    rows = {
        "current": list(peaks.current),
        "peak": list(peaks.by_category),
        "at_peak": list(peaks.at_peak),
        "predicted": [
            math.nan if predicted.get(c) is None else float(predicted[c])  # type: ignore[arg-type]
            for c in CATEGORIES
        ],
    }
    frame = pd.DataFrame(rows, index=pd.Index([str(c) for c in CATEGORIES], name="category"))
    for column in ("current", "peak", "at_peak"):
        frame[column] = frame[column].astype("int64")
    return frame


def timeline(run: RunView) -> pd.DataFrame:
    """One row per sample: time, step, phase, module, one column per category, total."""
    import pandas as pd

    samples = run.samples
    data: dict[str, list[Any]] = {
        "time": [s.time for s in samples],
        "step": [s.step for s in samples],
        "phase": [str(s.phase) for s in samples],
        "module": [s.module for s in samples],
    }
    for i, category in enumerate(CATEGORIES):
        data[str(category)] = [s.bytes[i] for s in samples]
    data["total"] = [s.total for s in samples]
    frame = pd.DataFrame(data)
    for column in [str(c) for c in CATEGORIES] + ["step", "total"]:
        frame[column] = frame[column].astype("int64")
    return frame


def modules(run: RunView) -> pd.DataFrame:
    """One row per module FQN: activations saved per micro-batch, forward/backward peaks, calls.

    A micro-batch is one forward pass of the outermost module (gradient accumulation runs
    several per optimizer step); every figure but ``calls`` is the most in any one micro-batch,
    never a sum over them:

    * ``activations``: bytes the module itself saved for backward (its children's are theirs),
      recomputed ones included under activation checkpointing (they are the recomputing
      module's).
    * ``activations_inclusive``: the same with its descendants'.
    * ``forward_peak`` / ``backward_peak``: the highest total seen while one forward (backward)
      of the module ran, above the total when it started.
    * ``calls``: a total, the module's forward calls over the whole run (recomputations count).

    NaN where the mode does not measure it: backward peaks need exact mode; fast mode without
    per-module counter reads (a slow counter) measures calls only.
    """
    import pandas as pd

    activity = run.module_activity()

    def column(values: list[int | None]) -> list[float] | list[int]:
        if any(v is None for v in values):
            return [math.nan if v is None else float(v) for v in values]
        return [int(v) for v in values if v is not None]

    return pd.DataFrame(
        {
            "activations": column([a.activations for a in activity]),
            "activations_inclusive": column([a.activations_inclusive for a in activity]),
            "forward_peak": column([a.forward_peak for a in activity]),
            "backward_peak": [
                math.nan if a.backward_peak is None else float(a.backward_peak) for a in activity
            ],
            "calls": [a.calls for a in activity],
        },
        index=pd.Index([a.name for a in activity], name="module"),
    )


def top_modules(run: RunView, limit: int = 10) -> list[tuple[str, int]]:
    """The ``limit`` modules that save the most activation bytes in a step (no pandas)."""
    pairs = [
        (a.name, a.activations)
        for a in run.module_activity()
        if a.activations is not None and a.activations > 0
    ]
    pairs.sort(key=lambda pair: (-pair[1], pair[0]))
    return pairs[:limit]


def summary(run: RunView) -> dict[str, Any]:
    """A JSON-able summary of the run (the stream's ``summary.json`` carries it).

    Keys: ``name``, ``mode``, ``device``, ``steps``, ``peak_bytes``, ``current_bytes``,
    ``capacity``, ``start_time``, ``end_time``, ``categories`` (category name → ``current``,
    ``peak``, ``at_peak``, ``predicted`` bytes) and ``oom`` (whether the run failed).
    """
    info = run.info
    peaks = run.peaks
    predicted = run.predicted
    categories = {
        str(category): {
            "current": peaks.current[i],
            "peak": peaks.by_category[i],
            "at_peak": peaks.at_peak[i],
            "predicted": predicted.get(category),
        }
        for i, category in enumerate(CATEGORIES)
    }
    return {
        "name": info.name,
        "mode": info.mode,
        "device": info.device,
        "steps": info.step,
        "peak_bytes": peaks.total,
        "current_bytes": sum(peaks.current),
        "capacity": info.capacity,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "categories": categories,
        "oom": run.failure is not None,
    }


def table(run: RunView, extra: list[str] | None = None) -> str:
    """The readable table: category, current, peak, at peak, predicted, error %.

    ``extra`` lines (the device waterfall on CUDA) follow after a blank line.
    """
    info = run.info
    peaks = run.peaks
    header = (
        f"{'category':<12} {'current':>12} {'peak':>12} {'at peak':>12} "
        f"{'predicted':>12} {'error':>8}"
    )
    lines = [
        f"gpumem: {info.name} · {info.mode} mode · {info.device} · {info.step} steps",
        header,
        "-" * len(header),
    ]
    for i, category in enumerate(CATEGORIES):
        predicted = run.predicted.get(category)
        peak = peaks.by_category[i]
        error = f"{(peak - predicted) / predicted * 100:+.1f}%" if predicted else "-"
        lines.append(
            f"{category.value:<12} {format_bytes(peaks.current[i]):>12} "
            f"{format_bytes(peak):>12} {format_bytes(peaks.at_peak[i]):>12} "
            f"{format_bytes(predicted):>12} {error:>8}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<12} {format_bytes(sum(peaks.current)):>12} {'':>12} "
        f"{format_bytes(peaks.total):>12}"
    )
    if extra:
        lines.append("")
        lines.extend(extra)
    return "\n".join(lines)


def compare_context(run: RunView) -> dict[str, Any]:
    """What explains a gap between predicted and measured: the run's rounding, dtypes, device."""
    info = run.info
    return {
        "rounding": info.rounding,
        "autocast_dtype": info.autocast_dtype,
        "attention_impl": info.attention_impl,
        "optimizer_class": info.optimizer_class,
        "training": info.training,
        "device": info.device,
    }


def metrics(run: RunView, *, leaks: int | None = None, prefix: str = "gpumem/") -> dict[str, int]:
    """A flat ``{name: number}`` dict for any logger (TensorBoard, W&B, MLflow, Lightning).

    ``gpumem/<category>``: bytes per category now; ``gpumem/current``: their total;
    ``gpumem/peak``: the highest total; ``gpumem/peak_<category>``: each category's own highest;
    ``gpumem/predicted_<category>``: the prediction, where there is one; ``gpumem/step``: steps
    done; ``gpumem/device_total``: the device's (or simulated) memory, where known;
    ``gpumem/leaks``: leaks confirmed, when ``leaks`` is given. All values are int bytes or counts.
    """
    peaks = run.peaks
    out: dict[str, int] = {}
    for i, category in enumerate(CATEGORIES):
        out[f"{prefix}{category}"] = peaks.current[i]
    out[f"{prefix}current"] = sum(peaks.current)
    out[f"{prefix}peak"] = peaks.total
    for i, category in enumerate(CATEGORIES):
        out[f"{prefix}peak_{category}"] = peaks.by_category[i]
    for category in CATEGORIES:
        predicted = run.predicted.get(category)
        if predicted is not None:
            out[f"{prefix}predicted_{category}"] = int(predicted)
    out[f"{prefix}step"] = run.info.step
    if run.device_total is not None:
        out[f"{prefix}device_total"] = run.device_total
    if leaks is not None:
        out[f"{prefix}leaks"] = leaks
    return out
