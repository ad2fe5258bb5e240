"""The run from ``die_on_small_gpu.py``, fitting after its top suggestion is applied.

Run it (CPU is fine)::

    python recipes/oom/fit_with_top_suggestion.py
    python recipes/oom/fit_with_top_suggestion.py --capacity 24MiB

It runs the failing training once to get the OOM report, takes the top-ranked suggestion (the one
that saves the most bytes), applies it to the same run (batch size with gradient accumulation,
activation checkpointing or bf16 autocast) and trains again under the same simulated capacity,
then prints the predicted and the measured peak. ``--kind batch_size`` applies that suggestion
instead of the top one.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from die_on_small_gpu import DEFAULT_BATCH, DEFAULT_CAPACITY, Setup, train  # noqa: E402

from profiler import SimulatedOutOfMemoryError  # noqa: E402
from profiler.units import format_bytes  # noqa: E402

#: The suggestion kinds this recipe knows how to apply to its own run.
APPLICABLE = ("batch_size", "checkpointing", "precision")


def apply(setup: Setup, kind: str, params: dict) -> Setup:
    """``setup`` with one suggestion applied."""
    if kind == "batch_size":
        return replace(
            setup, batch=int(params["micro_batch"]), accumulation=int(params["accumulation_steps"])
        )
    if kind == "checkpointing":
        return replace(setup, checkpointing=True)
    if kind == "precision":
        return replace(setup, autocast=True)
    raise ValueError(f"this recipe cannot apply a {kind!r} suggestion")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", default=DEFAULT_CAPACITY)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--kind", choices=APPLICABLE, help="apply this kind instead of the top")
    args = parser.parse_args(argv)
    setup = Setup(batch=args.batch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report path is printed below
            train(setup, args.capacity)
    except SimulatedOutOfMemoryError as exc:
        report = exc.gpumem.oom_report  # type: ignore[attr-defined]
    else:
        print("the run already fits: nothing to fix")
        return 0
    if report is None or not report.suggestions:
        print("no suggestion to apply", file=sys.stderr)
        return 1
    print(f"1. out of memory at {args.capacity}; report: {report.path.with_suffix('.html')}")
    wanted = args.kind
    chosen = next(
        (s for s in report.suggestions if s.kind == wanted) if wanted else iter(report.suggestions),
        None,
    )
    if chosen is None:
        print(f"the report has no {wanted} suggestion", file=sys.stderr)
        return 1
    if chosen.kind not in APPLICABLE:
        print(
            f"top suggestion is {chosen.title!r}: apply it by hand (this recipe applies "
            f"{', '.join(APPLICABLE)})",
            file=sys.stderr,
        )
        return 1
    print(
        f"2. applying: {chosen.title} (saves {format_bytes(chosen.saves_bytes)}, predicted "
        f"peak {format_bytes(chosen.peak_after)})"
    )
    fixed = apply(setup, chosen.kind, dict(chosen.params))
    try:
        mem = train(fixed, args.capacity)
    except SimulatedOutOfMemoryError as exc:
        print(f"3. still out of memory: {exc}", file=sys.stderr)
        return 1
    print(
        f"3. it fits: measured peak {format_bytes(mem.peak_bytes)} of {args.capacity} "
        f"({fixed.steps} steps, batch {fixed.batch} x {fixed.accumulation})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
