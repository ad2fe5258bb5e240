"""The GPU kit's checks: each workload in exact and fast mode against torch's and NVML's own
figures, the waterfall, the allocator readers, a real out-of-memory error."""

from __future__ import annotations

import gc
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from profiler.gpucheck.workloads import GiB, MiB, Workload, mlp_workload

__all__ = ["Kit", "agreement", "sync"]


def agreement(measured: int | None, reference: int | None) -> float | None:
    """``measured / reference − 1`` (0.004 = 0.4 % high), or ``None`` where either is missing."""
    if measured is None or reference is None or reference == 0:
        return None
    return measured / reference - 1.0


def sync(device: torch.device) -> None:
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
        sync(device)
        _reset_peak(device)
        kept: list[Any] = []
        started = time.perf_counter()
        with track_memory(
            model, opt, mode=mode, device=device, stream=False, name=f"gpucheck-{workload.name}"
        ) as mem:
            for _ in range(workload.steps):
                kept.append(workload.step(model, opt, device))
            sync(device)
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
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                workload.step(model, opt, device)
            sync(device)
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
        model, opt = mlp_workload(self.tiny).build(device)
        with track_memory(model, opt, mode="fast", device=device, stream=False) as mem:
            mlp_workload(self.tiny).step(model, opt, device)
        sync(device)
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
        sync(device)
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
        sync(self.device)
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
