"""Predicted against measured, per category, with the likely cause of each gap in words."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from profiler.records import CATEGORIES

if TYPE_CHECKING:
    import pandas

__all__ = ["compare", "explain_gap"]

#: A gap within this fraction of the prediction (or 4 KiB) counts as a match.
_TOLERANCE = 0.01
_SMALL = 4096


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return None
    return int(number)


def explain_gap(
    category: str,
    measured: int,
    predicted: int | None,
    context: dict[str, Any],
) -> str:
    """The likely cause of ``measured - predicted`` for one category, in a few words."""
    if predicted is None:
        return "no prediction for this category"
    gap = measured - predicted
    if abs(gap) <= max(_SMALL, _TOLERANCE * max(predicted, 1)):
        return "matches"
    rounding = int(context.get("rounding") or 1)
    ratio = measured / predicted if predicted else math.inf
    training = bool(context.get("training"))
    autocast = context.get("autocast_dtype")
    attention = str(context.get("attention_impl") or "")
    if measured == 0:
        if category == "gradients":
            return "no gradients held: backward did not run or zero_grad(set_to_none) freed them"
        if category == "optimizer":
            return "no optimizer state yet: the optimizer has not stepped"
        if category == "kv_cache":
            return "no KV cache kept (use_cache off, or the cache was freed)"
        return "nothing measured in this category"
    if category in ("weights", "buffers", "gradients", "optimizer") and (
        1.9 <= ratio <= 2.1 or 0.45 <= ratio <= 0.55 or 3.8 <= ratio <= 4.2
    ):
        return (
            f"a dtype the formula did not expect ({ratio:.2g}× the predicted bytes: "
            "fp32 vs 16-bit tensors, or an 8-bit state)"
        )
    if rounding > 1 and 0 < gap <= max(0.02 * predicted, rounding * 256):
        return f"allocator rounding (each tensor rounded up to {rounding} B)"
    if category == "optimizer":
        if gap > 0:
            return "optimizer scratch (foreach/fused temporaries or extra state kept between steps)"
        return "fewer states than the formula (parameters without grad, or state not built yet)"
    if category == "activations":
        if gap > 0 and attention == "eager":
            return "eager attention scores (batch × heads × seq × seq kept for backward)"
        if autocast is not None and gap > 0:
            return f"autocast to {autocast} keeps fp32 copies the formula did not expect"
        if gap > 0 and not training:
            return "activations kept alive after the forward (outputs or hooks holding tensors)"
        if gap < 0:
            return "fewer saved activations (checkpointing, fused kernels, or a shorter input)"
        return "extra saved tensors (dropout masks, upcasts, or losses kept for backward)"
    if category == "kv_cache" and ratio >= 1.9 and abs(ratio - round(ratio)) < 0.1:
        return (
            f"{round(ratio)} caches alive at once (a previous output still holds its cache "
            "while the next forward builds one)"
        )
    if category == "kv_cache":
        return "cache longer or wider than expected (pre-allocated static cache or extra tokens)"
    if category == "gradients" and gap > 0:
        return "gradients on tensors the formula did not count (frozen parameters with grads?)"
    if autocast is not None:
        return f"a dtype the formula did not expect (autocast {autocast})"
    return "tensors the formula did not count" if gap > 0 else "fewer tensors than predicted"


def compare(breakdown: pandas.DataFrame, *, context: dict[str, Any]) -> pandas.DataFrame:
    """Measured (peak) bytes against predicted bytes per category, with the gap and its cause.

    Args:
        breakdown: ``mem.breakdown()``: index ``category``, int columns ``peak`` (and
            ``current``), float column ``predicted`` with NaN where there is no prediction.
        context: what the tracker knew: ``rounding``, ``autocast_dtype``, ``attention_impl``,
            ``optimizer_class``, ``training``, ``device``.

    Returns:
        A DataFrame indexed by ``category`` in the fixed category order, with int64 ``measured``,
        nullable ``Int64`` ``predicted`` and ``gap`` (measured − predicted), float ``gap_pct``
        (gap as a percentage of the prediction, NaN where there is none) and str ``cause``.
    """
    import pandas as pd

    rows = []
    names = [str(c) for c in CATEGORIES] + [
        str(c) for c in breakdown.index if str(c) not in {str(k) for k in CATEGORIES}
    ]
    for name in names:
        if name not in breakdown.index:
            continue
        row = breakdown.loc[name]
        column = "peak" if "peak" in breakdown.columns else "current"
        measured = _as_int(row.get(column)) or 0
        predicted = _as_int(row.get("predicted")) if "predicted" in breakdown.columns else None
        gap = None if predicted is None else measured - predicted
        pct = math.nan if gap is None or not predicted else 100.0 * gap / predicted
        rows.append(
            {
                "category": name,
                "measured": measured,
                "predicted": predicted,
                "gap": gap,
                "gap_pct": pct,
                "cause": explain_gap(name, measured, predicted, context),
            }
        )
    frame = pd.DataFrame(
        rows, columns=["category", "measured", "predicted", "gap", "gap_pct", "cause"]
    )
    frame = frame.set_index("category")
    frame["measured"] = frame["measured"].astype("int64")
    frame["predicted"] = frame["predicted"].astype("Int64")
    frame["gap"] = frame["gap"].astype("Int64")
    frame["gap_pct"] = frame["gap_pct"].astype("float64")
    return frame
