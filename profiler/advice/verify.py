"""Verifying suggestions by replaying the step with each change applied.

A :data:`Replay` is handed in by whoever knows the engine (the facade builds one over the dry run,
:mod:`profiler.replay`): ``replay(change) -> peak bytes`` for a change such as ``{"batch": 32}``,
``{"autocast": "bfloat16"}``, ``{"checkpointing": True}``, ``{"optimizer": "adamw8bit"}`` or
``{"lora": 16}``; it raises where the change cannot be replayed. This module never imports it.

What a replay does not see, the measured run does: the user's own loss and whatever else the
step does outside the root forward. Where the run measured more than the replay of the unchanged
step (an OOM after a full step was seen), the difference is added to every replayed peak
(scaled with the batch for batch sizes). A suggestion is ``verified`` when its peak was replayed;
``fits=True`` only then. A change that cannot be replayed keeps its estimate, ``fits`` at most
``None``, and says why in its detail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from profiler.advice.facts import RunFacts, Suggestion
from profiler.units import format_bytes

__all__ = ["Replay", "unverified", "verify"]

#: ``replay(change) -> peak bytes``; raises where the change cannot be replayed.
Replay = Callable[[Mapping[str, Any]], int]


def _change_of(suggestion: Suggestion, facts: RunFacts) -> dict[str, Any] | None:
    """The replayable change behind ``suggestion`` (``None``: not replayable)."""
    kind, params = suggestion.kind, suggestion.params
    if kind == "precision" and params.get("how") == "autocast":
        return {"autocast": str(params.get("dtype", "bfloat16"))}
    if kind == "checkpointing":
        return {"checkpointing": True}
    if kind == "optimizer" and "8bit" in str(params.get("optimizer", "")).lower():
        return {"optimizer": "adamw8bit"}
    if kind == "lora" and params.get("method") == "lora":
        return {"lora": int(params.get("rank", 16))}
    return None


def unverified(suggestion: Suggestion, why: str) -> Suggestion:
    """``suggestion`` as an estimate: ``fits`` never True, the reason in its detail."""
    fits = None if suggestion.fits else suggestion.fits
    detail = f"{suggestion.detail} Estimated, not replayed: {why}.".strip()
    return replace(suggestion, fits=fits, verified=False, detail=detail)


def _fits(peak: int, facts: RunFacts, capacity: int | None) -> bool | None:
    return None if capacity is None else peak + facts.overhead <= capacity


def _largest_batch(
    replay: Replay, facts: RunFacts, capacity: int, upper: int, extra: float
) -> tuple[int, int | None]:
    """The largest batch in ``[1, upper]`` whose replayed peak fits, and that peak (0: none)."""

    def peak(b: int) -> int:
        return int(replay({"batch": b}) + extra * b)

    lo, hi, found = 1, max(upper, 1), None
    while lo <= hi:
        mid = (lo + hi) // 2
        value = peak(mid)
        if value + facts.overhead <= capacity:
            found, lo = (mid, value), mid + 1
        else:
            hi = mid - 1
    return found if found is not None else (0, None)


def _verify_batch(
    suggestion: Suggestion,
    replay: Replay,
    facts: RunFacts,
    capacity: int | None,
    now: int,
    extra: float,
    wording: Callable[[int], tuple[str, dict[str, Any]]],
) -> Suggestion:
    batch = facts.batch or 0
    new = int(suggestion.params.get("batch_size", 0))
    if capacity is None or batch <= 0 or new >= batch:
        peak = int(replay({"batch": max(new, 1)}) + extra * max(new, 1))
        return replace(
            suggestion, verified=True, replayed_peak=peak, fits=_fits(peak, facts, capacity)
        )
    # the projection's batch is exact where the peak was measured, an upper bound where it was
    # not (an OOM in the first forward): the replay decides below it
    best, found = _largest_batch(replay, facts, capacity, max(new, 1), extra)
    if best == 0 or found is None:
        first = int(replay({"batch": 1}) + extra)
        return replace(
            suggestion,
            title="Even a batch of 1 does not fit: the fixed memory alone exceeds the device",
            params={
                "batch_size": 0,
                "accumulation_steps": 0,
                "micro_batch": 0,
                "effective_batch": 0,
            },
            fits=False,
            verified=True,
            replayed_peak=first,
            peak_after=first + facts.overhead,
            saves_bytes=max(now - first, 0),
        )
    peak = found
    title, params = wording(best)
    return replace(
        suggestion,
        title=title,
        params=params,
        fits=True,
        verified=True,
        replayed_peak=peak,
        peak_after=peak + facts.overhead,
        saves_bytes=max(now - peak, 0),
    )


def verify(
    found: list[Suggestion],
    facts: RunFacts,
    capacity: int | None,
    now: int,
    replay: Replay,
    wording: Callable[[int], tuple[str, dict[str, Any]]],
) -> list[Suggestion]:
    """Each suggestion with its replayed peak (``verified``), or marked as an estimate.

    Args:
        found: the estimated suggestions.
        facts: the run.
        capacity: the device size to fit.
        now: the projected peak of the run as it is (tracked bytes, no overhead).
        replay: the replay function (see the module doc).
        wording: ``wording(batch) -> (title, params)`` for a batch-size suggestion.
    """
    try:
        baseline = int(replay({}))
    except Exception as error:  # noqa: BLE001 - no replay at all: every suggestion estimated
        return [unverified(s, _reason(error)) for s in found]
    missed = max(now - baseline, 0)
    extra = missed / facts.batch if facts.batch else 0.0
    result = []
    for suggestion in found:
        try:
            if suggestion.kind == "batch_size":
                result.append(
                    _verify_batch(suggestion, replay, facts, capacity, now, extra, wording)
                )
                continue
            change = _change_of(suggestion, facts)
            if change is None:
                result.append(unverified(suggestion, "this change is not replayed"))
                continue
            peak = int(replay(change)) + missed
        except Exception as error:  # noqa: BLE001 - that one change stays an estimate
            result.append(unverified(suggestion, _reason(error)))
            continue
        result.append(
            replace(
                suggestion,
                fits=_fits(peak, facts, capacity),
                verified=True,
                replayed_peak=peak,
                peak_after=peak + facts.overhead,
                saves_bytes=now - peak,
                detail=f"{suggestion.detail} Replayed: peak {format_bytes(peak)}.".strip(),
            )
        )
    return [s for s in result if s.saves_bytes > 0 or s.kind == "batch_size"]


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.rstrip(".")
