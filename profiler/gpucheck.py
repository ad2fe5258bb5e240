"""The GPU check kit: run gpumem against a real CUDA device and print a JSON summary.

Run it on a CUDA machine (needs only torch, nvidia-ml-py, psutil and pandas; transformers for the
transformer workloads; no textual, no network), from the repository root::

    PYTHONPATH=. python -m profiler.gpucheck --out gpucheck.json

It finishes in about two minutes on an H100 (a 4-minute budget skips what is left) and prints:

- per workload (MLP training, GPT-2 training, GPT-2 generation with a KV cache), in exact and
  fast mode: the engine's peak and categories vs ``torch.cuda.max_memory_allocated`` vs NVML;
- the device waterfall (NVML → outside PyTorch → reserved → cached free → allocated →
  categories);
- the fast-mode (and exact-mode) overhead ratio per workload (tracked / untracked step time);
- the segment map against the allocator's reserved bytes, memory-history recording, NVML's view
  and the cost of one NVML reading;
- a deliberately forced real out-of-memory error and whether gpumem captured it;
- the result of ``pytest tests/gpu -m gpu`` (run in a subprocess; ``--no-tests`` skips it).

Exit code 0 when every check passes (or there is no CUDA device: the summary says "skipped"),
1 when a check fails. ``--device cpu --tiny`` runs the same code paths on the CPU in seconds (a
smoke test of the kit itself; the CUDA-only checks are skipped).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from profiler.session.atomic import write_text_atomic

__all__ = ["Kit", "Workload", "agreement", "main", "parse_pytest_output", "run_kit", "workloads"]

#: Exact mode must agree with torch's own allocated counter within this fraction.
TOLERANCE = 0.01
#: Sections start only while the kit has run less than this many seconds.
BUDGET_SECONDS = 240.0
MiB = 1024**2
GiB = 1024**3
#: The workloads by name, in the order they run.
WORKLOAD_NAMES = ("mlp_train", "gpt2_train", "gpt2_generate")


# -- workloads -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """A model, its optimizer and one step; ``expected`` gives exact bytes per category if known."""

    name: str
    build: Callable[[torch.device], tuple[torch.nn.Module, torch.optim.Optimizer | None]]
    step: Callable[[torch.nn.Module, torch.optim.Optimizer | None, torch.device], Any]
    steps: int
    expected: Callable[[], dict[str, int]] | None = None


def _mlp(tiny: bool) -> Workload:
    width, layers, batch = (64, 2, 8) if tiny else (4096, 4, 512)

    def build(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        with torch.device(device):
            blocks: list[torch.nn.Module] = []
            for _ in range(layers):
                blocks += [
                    torch.nn.Linear(width, 2 * width),
                    torch.nn.GELU(),
                    torch.nn.Linear(2 * width, width),
                ]
            model = torch.nn.Sequential(*blocks)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(
        model: torch.nn.Module, opt: torch.optim.Optimizer | None, device: torch.device
    ) -> None:
        x = torch.randn(batch, width, device=device)
        model(x).square().mean().backward()
        assert opt is not None
        opt.step()
        opt.zero_grad(set_to_none=True)

    weights = layers * (2 * width * width + 2 * width + 2 * width * width + width) * 4

    def expected() -> dict[str, int]:
        return {"weights": weights, "gradients": weights, "optimizer": 2 * weights}

    return Workload("mlp_train", build, step, 3, expected)


def _gpt2_config(tiny: bool) -> Any:
    from transformers import GPT2Config

    if tiny:
        return GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=128,
                          bos_token_id=0, eos_token_id=0)  # fmt: skip
    return GPT2Config(n_layer=8, n_embd=1024, n_head=16, vocab_size=8192, n_positions=1024,
                      bos_token_id=0, eos_token_id=0)  # fmt: skip


def _gpt2_train(tiny: bool) -> Workload:
    batch, seq = (2, 16) if tiny else (8, 512)
    config = _gpt2_config(tiny)

    def build(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        from transformers import GPT2LMHeadModel

        with torch.device(device):
            model = GPT2LMHeadModel(config)
        model.train()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(
        model: torch.nn.Module, opt: torch.optim.Optimizer | None, device: torch.device
    ) -> None:
        ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        model(input_ids=ids, labels=ids).loss.backward()
        assert opt is not None
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Workload("gpt2_train", build, step, 3)


def _gpt2_generate(tiny: bool) -> Workload:
    batch, prompt, new = (2, 8, 4) if tiny else (8, 128, 64)
    config = _gpt2_config(tiny)

    def build(device: torch.device) -> tuple[torch.nn.Module, None]:
        from transformers import GPT2LMHeadModel

        with torch.device(device):
            model = GPT2LMHeadModel(config)
        model.eval()
        return model, None

    def step(
        model: torch.nn.Module, opt: torch.optim.Optimizer | None, device: torch.device
    ) -> Any:
        ids = torch.randint(1, config.vocab_size, (batch, prompt), device=device)
        with torch.no_grad():
            generate: Callable[..., Any] = getattr(model, "generate")  # noqa: B009
            return generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                use_cache=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )

    def expected() -> dict[str, int]:
        # keys and values, per layer: batch × (prompt + new − 1) positions × n_embd, float32
        return {"kv_cache": 2 * config.n_layer * batch * (prompt + new - 1) * config.n_embd * 4}

    return Workload("gpt2_generate", build, step, 1, expected)


def workloads(tiny: bool = False) -> list[Workload]:
    """The kit's workloads (the transformer ones only where transformers is installed)."""
    out = [_mlp(tiny)]
    try:
        import transformers  # noqa: F401
    except ImportError:
        return out
    return out + [_gpt2_train(tiny), _gpt2_generate(tiny)]


# -- helpers ---------------------------------------------------------------------------------


def agreement(measured: int | None, reference: int | None) -> float | None:
    """``measured / reference − 1`` (0.004 = 0.4 % high), or ``None`` where either is missing."""
    if measured is None or reference is None or reference == 0:
        return None
    return measured / reference - 1.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _settle(device: torch.device) -> None:
    """Free what the previous section left (the kit may empty the cache; the library never does)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _allocated(device: torch.device) -> int | None:
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None


def _max_allocated(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _nvml(device: torch.device) -> dict[str, Any] | None:
    """NVML's figures for this process now, and how they were found."""
    if device.type != "cuda":
        return None
    from profiler.backends.nvml import default_source

    memory = default_source().process_memory(device.index or 0)
    if memory is None:
        return None
    return {
        "process_used": memory.process_used,
        "device_used": memory.device_used,
        "device_total": memory.device_total,
        "nvml_index": memory.nvml_index,
        "how": memory.how,
    }


def _breakdown(mem: Any) -> dict[str, dict[str, int]]:
    frame = mem.breakdown()
    out = {}
    for category, row in frame.iterrows():
        out[str(category)] = {k: int(row[k]) for k in ("current", "peak", "at_peak")}
    return out


class Kit:
    """One run of the kit: the summary being built, the checks, the time budget."""

    def __init__(self, device: torch.device, tiny: bool, budget: float) -> None:
        self.device = device
        self.tiny = tiny
        self.budget = budget
        self.start = time.perf_counter()
        self.checks: list[dict[str, Any]] = []
        self.errors: dict[str, str] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def check(self, name: str, ok: bool | None, **detail: Any) -> None:
        self.checks.append({"name": name, "ok": ok, **detail})

    def section(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run a section; an exception is recorded (with its last lines), never fatal."""
        if self.elapsed() > self.budget:
            self.errors[name] = f"skipped: the kit's {self.budget:.0f} s budget is spent"
            return None
        try:
            return fn()
        except Exception as exc:  # the summary must come out whatever breaks
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            self.errors[name] = "".join(lines[-3:]).strip()
            self.check(name, False, error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            _settle(self.device)

    # -- measurements ------------------------------------------------------------------------
    def measure(self, workload: Workload, mode: str) -> dict[str, Any]:
        """One workload in one mode: the engine vs torch's counter vs NVML, and the waterfall."""
        from profiler.tracker import track_memory

        device = self.device
        _settle(device)
        base = _allocated(device)
        model, opt = workload.build(device)
        _sync(device)
        _reset_peak(device)
        kept: list[Any] = []
        started = time.perf_counter()
        with track_memory(
            model, opt, mode=mode, device=device, stream=False, name=f"gpucheck-{workload.name}"
        ) as mem:
            for _ in range(workload.steps):
                kept.append(workload.step(model, opt, device))
            _sync(device)
        seconds = time.perf_counter() - started
        torch_peak = _max_allocated(device)
        torch_now = _allocated(device)
        # exact mode sees what exists in the block (the model and what the steps create);
        # fast mode's counter starts from everything allocated on the device
        reference = (
            None if torch_peak is None or base is None
            else torch_peak - base if mem.mode == "exact" else torch_peak
        )  # fmt: skip
        breakdown = _breakdown(mem)
        try:
            waterfall: dict[str, Any] = mem.waterfall().as_dict()
        except Exception as exc:  # the waterfall is reported, not required, per workload
            waterfall = {"error": f"{type(exc).__name__}: {exc}"}
        row: dict[str, Any] = {
            "mode": mem.mode,
            "steps": workload.steps,
            "seconds": round(seconds, 3),
            "peak": int(mem.peak_bytes),
            "torch_max_allocated": torch_peak,
            "allocated_before_model": base,
            "reference_peak": reference,
            "error": agreement(int(mem.peak_bytes), reference),
            "current": int(mem.current_bytes),
            "torch_allocated": torch_now,
            "reference_current": (
                None
                if torch_now is None or base is None
                else torch_now - base
                if mem.mode == "exact"
                else torch_now
            ),  # fmt: skip
            "current_error": None,
            "categories": breakdown,
            "nvml": self._quiet(lambda: _nvml(device)),
            "waterfall": waterfall,
        }
        row["current_error"] = agreement(row["current"], row["reference_current"])
        if workload.expected is not None:
            expected = workload.expected()
            row["expected"] = expected
            row["expected_error"] = {
                k: agreement(breakdown.get(k, {}).get("current" if k == "kv_cache" else "peak"), v)
                for k, v in expected.items()
            }
        del kept, model, opt, mem
        return row

    @staticmethod
    def _quiet(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def overhead(self, workload: Workload) -> dict[str, Any]:
        """Seconds per step untracked, in fast mode and in exact mode, on the same model."""
        from profiler.tracker import track_memory

        device = self.device
        model, opt = workload.build(device)
        steps = 2 if self.tiny else 5

        def timed() -> float:
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                workload.step(model, opt, device)
            _sync(device)
            return (time.perf_counter() - t) / steps

        timed()  # warm up: kernels, cuBLAS handles, optimizer state
        untracked = [timed()]
        tracked: dict[str, float] = {}
        for mode in ("fast", "exact"):
            with track_memory(model, opt, mode=mode, device=device, stream=False):
                workload.step(model, opt, device)  # the first tracked step installs hooks
                tracked[mode] = timed()
            untracked.append(timed())
        base = min(untracked)
        return {
            "untracked_s_per_step": round(base, 6),
            "fast_s_per_step": round(tracked["fast"], 6),
            "exact_s_per_step": round(tracked["exact"], 6),
            "fast_ratio": round(tracked["fast"] / base, 4),
            "exact_ratio": round(tracked["exact"] / base, 4),
        }

    def waterfall_now(self) -> dict[str, Any]:
        """A waterfall from fresh readings, and whether it sums to NVML's figure."""
        from profiler.backends import cuda
        from profiler.tracker import track_memory
        from profiler.waterfall import build_waterfall

        device = self.device
        model, opt = _mlp(self.tiny).build(device)
        with track_memory(model, opt, mode="fast", device=device, stream=False) as mem:
            _mlp(self.tiny).step(model, opt, device)
        _sync(device)
        nvml = _nvml(device)
        reading = cuda.allocator_reading(device)
        assert reading is not None
        w = build_waterfall(
            nvml_used=None if nvml is None else nvml["process_used"],
            reserved=reading.reserved,
            allocated=reading.allocated,
            categories=mem.samples[-1].bytes,
            device=str(device),
            inactive_split=reading.inactive_split,
        )
        sums = (
            w.outside_pytorch is not None
            and w.reserved is not None
            and w.outside_pytorch + w.reserved == w.nvml_process_used
        )
        ok = bool(sums and not w.problems())
        self.check(
            "waterfall_sums_to_nvml",
            ok,
            nvml_process_used=w.nvml_process_used,
            outside_pytorch=w.outside_pytorch,
            reserved=w.reserved,
            nvml_how=None if nvml is None else nvml["how"],
            problems=w.problems(),
        )
        del model, opt
        return {"waterfall": w.as_dict(), "text": w.lines(), "nvml": nvml}

    def segments(self) -> dict[str, Any]:
        """The segment map against the allocator's own reserved and allocated bytes."""
        from profiler.backends import cuda

        device = self.device
        keep = [torch.empty(n, dtype=torch.uint8, device=device) for n in (300, 2 * MiB, 25 * MiB)]
        _sync(device)
        segments = cuda.segment_map(device.index or 0)
        reading = cuda.allocator_reading(device)
        assert reading is not None
        total = sum(s.total for s in segments)
        allocated = sum(s.allocated for s in segments)
        ok = total == reading.reserved and allocated == reading.allocated
        self.check("segment_map_matches_allocator", ok, segments_total=total,
                   reserved=reading.reserved, segments_allocated=allocated,
                   allocated=reading.allocated)  # fmt: skip
        del keep
        return {"segments": len(segments), "reserved": total, "allocated": allocated}

    def history(self) -> dict[str, Any]:
        """Memory-history recording sees a 3 MiB allocation."""
        from profiler.backends.cuda import MemoryHistory

        device = self.device
        with MemoryHistory(max_entries=10_000) as history:
            block = torch.empty(3 * MiB, dtype=torch.uint8, device=device)
            snapshot = history.snapshot()
        traces = snapshot.get("device_traces", [])
        entries = traces[device.index or 0] if len(traces) > (device.index or 0) else []
        allocs = [e for e in entries if e.get("action") == "alloc" and e.get("size", 0) >= 3 * MiB]
        self.check("memory_history_records_allocations", bool(allocs), entries=len(entries))
        del block
        return {"entries": len(entries), "big_allocs": len(allocs)}

    def forced_oom(self) -> dict[str, Any]:
        """Ask for more than the device has: torch raises, gpumem must capture it."""
        from profiler.backends import cuda
        from profiler.backends.cuda import OomObserver
        from profiler.records import EventKind
        from profiler.tracker import track_memory

        device = self.device
        total = torch.cuda.get_device_properties(device).total_memory
        request = total + GiB
        observer = OomObserver(snapshot=True)
        attached = observer.attach()
        before = cuda.allocator_reading(device)
        mem = track_memory(mode="fast", device=device, stream=False, name="gpucheck-oom")
        message = None
        try:
            with mem:
                torch.empty(request, dtype=torch.uint8, device=device)
        except torch.OutOfMemoryError as exc:
            message = str(exc).splitlines()[0]
        finally:
            observer.detach()
        after = cuda.allocator_reading(device)
        failure = getattr(mem, "failure", None)
        events = [e for e in getattr(mem, "events", []) if e.kind == EventKind.OOM]
        ooms = (
            None if before is None or after is None or before.num_ooms is None
            or after.num_ooms is None else after.num_ooms - before.num_ooms
        )  # fmt: skip
        notice = observer.notices[-1] if observer.notices else None
        captured = (
            message is not None
            and attached
            and notice is not None
            and notice.requested >= total
            and ooms == 1
            and failure is not None
            and not failure.simulated
        )
        self.check("real_oom_captured", captured, requested=request)
        taken = observer.snapshots[-1] if observer.snapshots else None
        at_failure = None if taken is None else len(cuda.segments_from_snapshot(taken))
        return {
            "raised": message,
            "observer_attached": attached,
            "observer_notice": None if notice is None else {
                "device": notice.device, "requested": notice.requested,
                "device_total": notice.device_total, "device_free": notice.device_free,
            },
            "snapshot_segments_at_failure": at_failure,
            "num_ooms_delta": ooms,
            "tracker_failure": None if failure is None else {
                "source": str(failure.source), "requested": failure.requested,
                "total": failure.total, "capacity": failure.capacity, "free": failure.free,
            },
            "oom_events": len(events),
            "oom_report": getattr(mem, "oom_report", None) is not None,
        }  # fmt: skip

    def nvml_view(self) -> dict[str, Any]:
        """NVML's devices, this process's row, and the cost of one process reading."""
        from dataclasses import asdict

        from profiler.backends.nvml import default_source

        source = default_source()
        keep = torch.empty(64 * MiB, dtype=torch.uint8, device=self.device)
        _sync(self.device)
        index = self.device.index or 0
        source.process_reading(index)
        calls = 200
        t = time.perf_counter()
        for _ in range(calls):
            source.process_reading(index)
        cost_us = (time.perf_counter() - t) / calls * 1e6
        mine = [asdict(p) for p in source.processes() if p.pid == os.getpid()]
        memory = source.process_memory(index)
        reserved = torch.cuda.memory_reserved(self.device)
        ok = (
            memory is not None
            and memory.process_used is not None
            and memory.process_used >= reserved
        )
        self.check("nvml_sees_this_process", ok, how=None if memory is None else memory.how,
                   process_used=None if memory is None else memory.process_used,
                   reserved=reserved)  # fmt: skip
        del keep
        return {
            "devices": [asdict(d) for d in source.devices()],
            "this_process": mine,
            "process_reading_us": round(cost_us, 1),
        }


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
    _sync(device)


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


if __name__ == "__main__":
    sys.exit(main())
