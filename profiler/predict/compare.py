"""Predicted against measured and an independent reference, per category, with the cause of
each gap in words.

``predicted`` is the replay's figure where the step was replayed on fake tensors (``source``
``"replay"``, :mod:`profiler.predict.honest`), else the formulas' (``"formulas"``,
:mod:`profiler.predict.tracked`), else none. ``reference`` is a figure reached by another route
(the live tensors' local sizes) so that a measurement and a prediction built on the same wrong
input cannot pass as a match: ``check`` says which of the three disagrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from profiler.records import CATEGORIES

if TYPE_CHECKING:
    import pandas

__all__ = ["CHECKS", "check", "compare", "explain_gap"]

#: A gap within this fraction of the prediction (or 4 KiB) counts as a match.
_TOLERANCE = 0.01
_SMALL = 4096
#: What ``check`` says: all three agree, or which one disagrees.
CHECKS = (
    "ok",
    "ok, no reference",
    "predicted differs",
    "measured differs",
    "reference differs",
    "all differ",
    "no prediction",
    "no prediction, reference agrees",
    "no prediction, reference differs",
)
_SHARED = (
    "measured and predicted agree but the reference ({reference} B, the live tensors' local "
    "sizes) differs: a shared wrong input (a storage larger than its tensor, a sharded "
    "tensor's global size), so the match proves nothing"
)
_MEASURED = (
    "predicted and the reference ({reference} B, the live tensors' local sizes) agree but the "
    "measurement differs: the ledger charges whole storages (a tensor that is a view into a "
    "larger storage keeps all of it alive) or tensors the {source} did not count"
)
_REPLAY_GAP = (
    "the run did what the replay did not: {what} (the replay runs the root forward on the "
    "last recorded input, the loss the model returned or its output's sum, backward and a "
    "fresh optimizer's step)"
)


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


def _matches(measured: int, predicted: int) -> bool:
    return abs(measured - predicted) <= max(_SMALL, _TOLERANCE * max(predicted, 1))


def check(measured: int, predicted: int | None, reference: int | None) -> str:
    """Which of measured, predicted and reference disagrees (one of :data:`CHECKS`)."""
    if predicted is None:
        if reference is None:
            return "no prediction"
        agree = _matches(measured, reference)
        return "no prediction, reference agrees" if agree else "no prediction, reference differs"
    if reference is None:
        return "ok, no reference" if _matches(measured, predicted) else "predicted differs"
    mp, mr, pr = (
        _matches(measured, predicted),
        _matches(measured, reference),
        _matches(predicted, reference),
    )
    if mp and mr:
        return "ok"
    if mp:
        return "reference differs"
    if mr:
        return "predicted differs"
    return "measured differs" if pr else "all differ"


def _replay_cause(category: str, measured: int, predicted: int) -> str:
    if _matches(measured, predicted):
        return "matches"
    if measured > predicted:
        what = {
            "temporaries": "tensors alive across backward (the model's output kept, a loss "
            "computed outside the model)",
            "other": "tensors made before the block (inputs, targets) used in the step",
            "kv_cache": "an earlier cache kept alive while the next one was built",
            "activations": "more saved for backward (a longer input than the last one, or "
            "work outside the model's forward)",
        }.get(category, "tensors outside the model's step")
    else:
        what = {
            "activations": "the step's input was made before the block (so it is other), or "
            "a shorter input",
            "temporaries": "less working memory than the replayed step (inputs made before "
            "the block, a smaller last batch)",
        }.get(category, "fewer tensors than the replayed step")
    return _REPLAY_GAP.format(what=what)


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


def compare(
    breakdown: pandas.DataFrame,
    *,
    context: dict[str, Any],
    replayed: Mapping[str, int] | None = None,
    reference: Mapping[str, int | None] | None = None,
) -> pandas.DataFrame:
    """Measured (peak) bytes against predicted and reference bytes per category.

    Args:
        breakdown: ``mem.breakdown()``: index ``category``, int columns ``peak`` (and
            ``current``), float column ``predicted`` (the formulas) with NaN where there is none.
        context: what the tracker knew: ``rounding``, ``autocast_dtype``, ``attention_impl``,
            ``optimizer_class``, ``training``, ``device``.
        replayed: each category's peak in the replay of the step on fake tensors; where given
            it is the prediction (``source`` ``"replay"``), else the formulas' figure is.
        reference: each category's bytes by an independent route (``None``: no such route).

    Returns:
        A DataFrame indexed by ``category`` in the fixed category order, with int64 ``measured``,
        nullable ``Int64`` ``predicted``, str ``source`` (``"replay"``, ``"formulas"`` or
        ``"none"``), ``Int64`` ``reference``, ``Int64`` ``gap`` (measured − predicted), float
        ``gap_pct`` (gap as a percentage of the prediction; NaN where there is none, and where
        measured and predicted agree but the reference does not: no clean 0.0 for a match built
        on a shared wrong input), str ``check`` (one of :data:`CHECKS`) and str ``cause``.
    """
    import pandas as pd

    columns = ["measured", "predicted", "source", "reference", "gap", "gap_pct", "check"]
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
        predicted: int | None
        if replayed is not None and name in replayed:
            predicted, source = int(replayed[name]), "replay"
        else:
            predicted = _as_int(row.get("predicted")) if "predicted" in breakdown.columns else None
            source = "none" if predicted is None else "formulas"
        ref = None if reference is None else _as_int(reference.get(name))
        verdict = check(measured, predicted, ref)
        gap = None if predicted is None else measured - predicted
        pct = math.nan if gap is None or not predicted else 100.0 * gap / predicted
        if verdict == "reference differs":
            pct, cause = math.nan, _SHARED.format(reference=ref)
        elif verdict == "measured differs":
            cause = _MEASURED.format(reference=ref, source=source)
        elif source == "replay" and predicted is not None:
            cause = _replay_cause(name, measured, predicted)
        else:
            cause = explain_gap(name, measured, predicted, context)
        values = [measured, predicted, source, ref, gap, pct, verdict]
        rows.append({"category": name, **dict(zip(columns, values, strict=True)), "cause": cause})
    frame = pd.DataFrame(rows, columns=["category", *columns, "cause"]).set_index("category")
    frame["measured"] = frame["measured"].astype("int64")
    for column in ("predicted", "reference", "gap"):
        frame[column] = frame[column].astype("Int64")
    frame["gap_pct"] = frame["gap_pct"].astype("float64")
    return frame
