"""Scripted devices, processes and sessions for the ``gpumem top`` tests (no NVML, no disk)."""

from __future__ import annotations

from collections.abc import Sequence

from profiler.backends.base import DeviceInfo, ProcessInfo
from profiler.records import CATEGORIES
from profiler.session.reader import HistoryPoint, SessionEvent, SessionMeta, SessionView, StepPoint
from tui.snapshot import SnapshotBuilder

GIB = 1024**3
MIB = 1024**2
FIXED_TIME = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


class ScriptedSource:
    """A DeviceSource whose answers (or errors) the test sets."""

    def __init__(
        self,
        devices: Sequence[DeviceInfo] = (),
        processes: Sequence[ProcessInfo] = (),
        *,
        device_error: Exception | None = None,
        process_error: Exception | None = None,
    ) -> None:
        self.device_list = list(devices)
        self.process_list = list(processes)
        self.device_error = device_error
        self.process_error = process_error
        self.calls = 0

    def devices(self) -> list[DeviceInfo]:
        self.calls += 1
        if self.device_error is not None:
            raise self.device_error
        return list(self.device_list)

    def processes(self) -> list[ProcessInfo]:
        if self.process_error is not None:
            raise self.process_error
        return list(self.process_list)


class ScriptedSessions:
    """A session source returning the views the test sets."""

    def __init__(self, views: Sequence[SessionView] = ()) -> None:
        self.views = list(views)
        self.error: Exception | None = None

    def poll(self) -> list[SessionView]:
        if self.error is not None:
            raise self.error
        return list(self.views)


def gpus(count: int = 2) -> list[DeviceInfo]:
    """``count`` 80 GiB GPUs with fixed, different loads."""
    return [
        DeviceInfo(
            index=i,
            uuid=f"GPU-{i:04d}",
            name="NVIDIA H100 80GB HBM3",
            memory_total=80 * GIB,
            memory_used=(10 + 17 * i) % 80 * GIB,
            memory_free=(80 - (10 + 17 * i) % 80) * GIB,
            utilization=(30 + 23 * i) % 100,
            temperature=40 + 3 * i,
            power_watts=300.0 + 10 * i,
        )
        for i in range(count)
    ]


def processes(count: int = 4) -> list[ProcessInfo]:
    """``count`` processes with fixed users, memory and commands."""
    users = ("alice", "bob", "carol", "dave")
    return [
        ProcessInfo(
            pid=1000 + 7 * i,
            device_index=i % 2,
            gpu_memory=((i * 5) % 11 + 1) * GIB,
            name="python",
            user=users[i % 4],
            command=f"python train_{i}.py --batch {8 * (i + 1)}",
        )
        for i in range(count)
    ]


def category_bytes(**values: int) -> tuple[int, ...]:
    return tuple(values.get(str(c), 0) for c in CATEGORIES)


def scripted_meta(
    name: str,
    pid: int,
    start: float,
    device: str,
    rank: int | None,
    job_id: str | None,
    world_size: int,
    capacity: int | None,
) -> SessionMeta:
    """The metadata of a scripted session (a GPT-2 in fast mode, predictions in the meta)."""
    return SessionMeta(
        id=f"20270115T075900.000000-node-{pid}-{name}" + ("" if job_id is None else f"-r{rank}"),
        directory=f"/scripted/{name}",
        name=name,
        pid=pid,
        host="node",
        start_time=start,
        rank=rank,
        world_size=None if rank is None else world_size,
        job_id=job_id,
        device=device,
        device_index=int(device.split(":")[1]) if ":" in device else None,
        model_class="GPT2LMHeadModel",
        param_count=124_439_808,
        mode="fast",
        capacity=capacity,
        predicted=(
            ("weights", 2 * GIB),
            ("gradients", 2 * GIB),
            ("optimizer", 4 * GIB),
            ("activations", 5 * GIB),
        ),
        schema=1,
    )


def make_session(
    name: str = "train",
    pid: int = 4242,
    *,
    live: bool = True,
    steps: int = 20,
    growth: int = 0,
    events: Sequence[SessionEvent] = (),
    capacity: int | None = None,
    device: str = "cuda:0",
    rank: int | None = None,
    step_seconds: float = 1.0,
    job_id: str | None = None,
    world_size: int = 2,
    scale: int = 1,
) -> SessionView:
    """A session with ``steps`` step ends, activations growing ``growth`` bytes a step."""
    start = FIXED_TIME - steps * step_seconds - 5
    base = dict(
        weights=2 * GIB, gradients=2 * GIB, optimizer=4 * GIB, temporaries=256 * MIB * scale
    )
    history = []
    step_points = []
    for i in range(steps):
        acts = 6 * GIB * scale + growth * i
        forward = category_bytes(**base, activations=acts)
        history.append(HistoryPoint(start + i * step_seconds, i, sum(forward), forward))
        idle = category_bytes(**base, activations=growth * i)
        history.append(HistoryPoint(start + i * step_seconds + 0.5, i, sum(idle), idle))
        step_points.append(
            StepPoint(i, start + (i + 1) * step_seconds, step_seconds, sum(idle), sum(forward),
                      idle, None, forward)
        )  # fmt: skip
    last = step_points[-1] if step_points else None
    meta = scripted_meta(name, pid, start, device, rank, job_id, world_size, capacity)
    return SessionView(
        meta=meta,
        live=live,
        end_time=None if live else FIXED_TIME - 30,
        status=None if live else "ok",
        last_update=last.time if last else None,
        step=last.step if last else None,
        phase="forward" if live else None,
        module="transformer.h.3.attn" if live else None,
        current=last.total if last else None,
        bytes=last.bytes if last else None,
        peak=max((s.peak for s in step_points), default=None),
        allocator=None,
        nvml=None,
        history=tuple(history),
        steps=tuple(step_points),
        events=tuple(events),
        modules=(
            ("transformer.h.3.mlp", 900 * MIB),
            ("transformer.h.2.mlp", 880 * MIB),
            ("transformer.h.3.attn", 512 * MIB),
            ("lm_head", 400 * MIB),
        ),
        summary=None if live else {"steps": steps},
        error=None,
        read_skipped=0,
    )


LEAK = SessionEvent(
    FIXED_TIME - 10,
    18,
    "leak",
    "activations grow 64.00 MiB/step",
    {
        "category": "activations",
        "bytes_per_step": 64 * MIB,
        "site": "train.py:57",
        "pattern": "linear",
        "suggestion": "append loss.item(), not loss, to the history list",
    },
)
SUGGESTION = SessionEvent(
    FIXED_TIME - 9,
    18,
    "suggestion",
    "",
    {"kind": "checkpointing", "title": "activation checkpointing", "saves_bytes": 4 * GIB,
     "fits": True},
)  # fmt: skip


def job_sessions(job_id: str = "j7", ranks: int = 3, world_size: int = 4) -> list[SessionView]:
    """``ranks`` ranks of a job on GPUs 0.. (rank r's activations and temporaries x (r + 1),
    rank 1 two steps behind): peaks 14.25, 20.50 and 26.75 GiB for three ranks."""
    return [
        make_session(
            "ddp-train", 5000 + r, device=f"cuda:{r}", rank=r, job_id=job_id,
            world_size=world_size, scale=r + 1, steps=18 if r == 1 else 20,
        )
        for r in range(ranks)
    ]  # fmt: skip


def scripted_builder(
    *, gpu_count: int = 2, no_gpu: bool = False, sessions: Sequence[SessionView] | None = None
) -> SnapshotBuilder:
    """A builder over scripted GPUs, processes and sessions, with the clock frozen."""
    if sessions is None:
        sessions = [
            make_session("train", 4242, growth=64 * MIB, events=(LEAK, SUGGESTION)),
            make_session("eval", 4243, device="cuda:1", rank=1),
            make_session("old-run", 4100, live=False, steps=5),
        ]
    source = None if no_gpu else ScriptedSource(gpus(gpu_count), processes())
    return SnapshotBuilder(
        source,
        ScriptedSessions(sessions),
        clock=lambda: FIXED_TIME,
        source_error="NVML library not available (NVML Shared Library Not Found)"
        if no_gpu
        else None,
    )
