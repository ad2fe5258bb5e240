"""Running the GPU kit: the environment, the tests on the device, the summary and ``main``."""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from profiler.gpucheck.kit import Kit, sync
from profiler.gpucheck.workloads import (
    BUDGET_SECONDS,
    TOLERANCE,
    WORKLOAD_NAMES,
    workloads,
)
from profiler.session.atomic import write_text_atomic

__all__ = ["main", "parse_pytest_output", "run_kit"]


def _env(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["gpu_memory"] = int(props.total_memory)
        env["capability"] = f"{props.major}.{props.minor}"
    env["textual_imported"] = sys.modules.get("textual") is not None
    return env


def _warm_up(device: torch.device) -> None:
    """Create cuBLAS/cuBLASLt handles and workspaces (forward and autograd threads) first.

    They live for the whole process and the engine cannot see them (they are allocated inside
    the ops), so the kit creates them before it takes its baseline.
    """
    layer = torch.nn.Linear(256, 256, device=device)
    opt = torch.optim.AdamW(layer.parameters())
    x = torch.randn(4, 64, 256, device=device)
    q = layer(x).view(4, 4, 64, 64)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    (out.float().square().mean() + (x @ layer.weight).sum()).backward()
    opt.step()
    sync(device)


def run_pytest(timeout: float = 150.0) -> dict[str, Any]:
    """``pytest tests/gpu -m gpu`` in a subprocess: return code and its summary line."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q", "-p",
               "no:cacheprovider", "-W", "ignore::pytest.PytestConfigWarning"]  # fmt: skip
    try:
        done = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout:.0f} s"}
    return {"returncode": done.returncode, **parse_pytest_output(done.stdout + done.stderr)}


def parse_pytest_output(text: str) -> dict[str, Any]:
    """Counts from pytest's last summary line ("3 passed, 1 skipped in 2.1s")."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    counts = {
        word: int(n)
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)
    }
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"summary": summary, "counts": counts, "failures": failures[:20]}


def _agreement_checks(kit: Kit, name: str, row: dict[str, Any]) -> None:
    """The engine vs torch's counter: peak and current within :data:`TOLERANCE`, per mode."""
    for mode in ("exact", "fast"):
        result = row.get(mode) or {}
        for what, error_key, value_key, reference_key in (
            ("peak", "error", "peak", "reference_peak"),
            ("current", "current_error", "current", "reference_current"),
        ):
            error = result.get(error_key)
            if error is None:
                continue
            kit.check(
                f"{name}:{mode}_{what}_within_1pct",
                abs(error) <= TOLERANCE,
                error=round(error, 6),
                engine=result[value_key],
                torch=result[reference_key],
            )


def run_kit(
    device: str | torch.device = "cuda",
    *,
    tiny: bool = False,
    tests: bool = True,
    budget: float = BUDGET_SECONDS,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run every section and return the JSON-able summary (``ok`` None when skipped).

    Args:
        device: the CUDA device (or ``"cpu"`` for a smoke test of the kit).
        tiny: tiny workloads (a smoke test).
        tests: also run ``pytest tests/gpu -m gpu``.
        budget: no section starts after this many seconds.
        only: the workloads to run by name (default: all).
    """
    device = torch.device(device)
    summary: dict[str, Any] = {"kit": "gpumem gpucheck", "version": 1, "env": _env(device)}
    if device.type == "cuda" and not torch.cuda.is_available():
        summary.update(ok=None, skipped="no CUDA device (torch.cuda.is_available() is False)")
        return summary
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    kit = Kit(device, tiny, budget)
    kit.section("warm_up", lambda: _warm_up(device))
    results: dict[str, Any] = {}
    for workload in workloads(tiny):
        if only is not None and workload.name not in only:
            continue
        row: dict[str, Any] = {}
        for mode in ("exact", "fast"):
            row[mode] = kit.section(
                f"{workload.name}:{mode}", functools.partial(kit.measure, workload, mode)
            )
        row["overhead"] = kit.section(
            f"{workload.name}:overhead", functools.partial(kit.overhead, workload)
        )
        results[workload.name] = row
        if device.type == "cuda":
            _agreement_checks(kit, workload.name, row)
    summary["workloads"] = results  # fmt: skip
    if device.type == "cuda":
        summary["waterfall"] = kit.section("waterfall", kit.waterfall_now)
        summary["segments"] = kit.section("segments", kit.segments)
        summary["history"] = kit.section("history", kit.history)
        summary["nvml"] = kit.section("nvml", kit.nvml_view)
        summary["oom"] = kit.section("oom", kit.forced_oom)
    if tests and device.type == "cuda":
        # whatever the sections took, the whole kit stays under five minutes
        timeout = max(30.0, 285.0 - kit.elapsed())
        summary["pytest"] = kit.section("pytest", functools.partial(run_pytest, timeout))
        pytest_result = summary["pytest"] or {}
        kit.check("pytest_tests_gpu", pytest_result.get("returncode") == 0,
                  summary=pytest_result.get("summary"))  # fmt: skip
    summary["checks"] = kit.checks
    summary["errors"] = kit.errors
    summary["seconds"] = round(kit.elapsed(), 1)
    summary["env"]["textual_imported"] = sys.modules.get("textual") is not None
    summary["ok"] = all(c["ok"] for c in kit.checks if c["ok"] is not None) and not kit.errors
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the kit, print the JSON summary (and write it to ``--out``); 1 when a check fails."""
    parser = argparse.ArgumentParser(
        prog="python -m profiler.gpucheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--no-tests", action="store_true", help="skip pytest tests/gpu")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke test)")
    parser.add_argument("--tiny", action="store_true", help="tiny workloads (a smoke test)")
    parser.add_argument(
        "--workloads",
        default=None,
        help="comma-separated workloads to run (mlp_train, gpt2_train, gpt2_generate; all)",
    )
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        print(f"gpucheck: error: bad --device {args.device!r}: {exc}", file=sys.stderr)
        return 2
    only = None if args.workloads is None else [w.strip() for w in args.workloads.split(",")]
    for name in only or []:
        if name not in WORKLOAD_NAMES:
            known = ", ".join(WORKLOAD_NAMES)
            print(f"gpucheck: error: unknown workload {name!r} (known: {known})", file=sys.stderr)
            return 2
    summary = run_kit(
        device, tiny=args.tiny, tests=not args.no_tests, budget=args.budget, only=only
    )
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, text + "\n")
    return 0 if summary["ok"] in (True, None) else 1
