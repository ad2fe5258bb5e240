"""The session stream: writer files, rate limit, rotation, and a reader that survives bad files."""

from __future__ import annotations

import gc
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from profiler.records import (
    CATEGORIES,
    AllocatorReading,
    Category,
    Event,
    EventKind,
    Failure,
    LiveStorage,
    ModuleActivity,
    NvmlReading,
    Peaks,
    Phase,
    Sample,
    SessionInfo,
    StepRecord,
)
from profiler.run import RunView
from profiler.session.files import JsonlTail
from profiler.session.layout import gpumem_home, prune_sessions, sessions_dir
from profiler.session.reader import SessionMeta, SessionReader, _process_alive
from profiler.session.writer import SCHEMA_VERSION, SessionWriter

REPO = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0


def sample(t: float, step: int = 0, total_scale: int = 1, module: str | None = "enc") -> Sample:
    values = tuple((i + 1) * 1000 * total_scale for i in range(len(CATEGORIES)))
    return Sample(t, step, Phase.FORWARD, module, values, sum(values))


def step_record(step: int, t: float, total: int) -> StepRecord:
    values = (total,) + (0,) * (len(CATEGORIES) - 1)
    return StepRecord(step, t, 0.5, values, total, total + 10, values)


def writer(tmp_path: Path, **kwargs: object) -> SessionWriter:
    options: dict[str, object] = {
        "home": tmp_path,
        "name": "unit",
        "start_time": T0,
        "pid": 4321,
        "host": "node-a",
        "flush_thread": False,
        "prune": False,
    }
    options.update(kwargs)
    return SessionWriter.create(**options)  # type: ignore[arg-type]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def reader(
    tmp_path: Path, alive: set[int], now: float = T0 + 100, **kwargs: object
) -> SessionReader:
    return SessionReader(
        tmp_path,
        clock=lambda: now,
        pid_exists=lambda pid: pid in alive,
        host="node-a",
        **kwargs,  # type: ignore[arg-type]
    )


# -- home and directory -------------------------------------------------------------------------


def test_home_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUMEM_HOME", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gpumem_home() == tmp_path / "explicit"
    assert stat.S_IMODE(os.stat(tmp_path / "explicit").st_mode) == 0o700
    monkeypatch.delenv("GPUMEM_HOME")
    assert gpumem_home(create=False) == tmp_path / "xdg" / "gpumem"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gpumem_home(create=False) == tmp_path / "home" / ".cache" / "gpumem"
    assert gpumem_home(tmp_path / "arg", create=False) == tmp_path / "arg"


def test_directory_name_meta_and_modes(tmp_path: Path) -> None:
    w = writer(tmp_path, name="my-train job", device="cuda:1", device_index=1, capacity=8 << 30)
    assert w.directory.parent == sessions_dir(tmp_path)
    assert w.directory.name == "20270115T080000.000000-node_a-4321-my_train_job"
    assert stat.S_IMODE(os.stat(w.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "sessions").st_mode) == 0o700
    meta = json.loads((w.directory / "meta.json").read_text())
    assert meta["v"] == SCHEMA_VERSION
    assert (meta["name"], meta["pid"], meta["host"]) == ("my-train job", 4321, "node-a")
    assert (meta["rank"], meta["world_size"]) == (None, None)
    assert meta["start_time"] == T0
    assert meta["categories"] == [str(c) for c in CATEGORIES]
    assert (meta["device"], meta["device_index"], meta["capacity"]) == ("cuda:1", 1, 8 << 30)
    # A second session in the same microsecond gets its own directory.
    assert writer(tmp_path, name="my-train job").directory.name.endswith("-my_train_job-2")
    parsed = SessionMeta.from_directory(w.directory)
    assert (parsed.host, parsed.pid, parsed.name, parsed.start_time) == (
        "node_a",
        4321,
        "my_train_job",
        T0,
    )
    w.close()


def test_meta_update_is_atomic_rewrite(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.update_meta(model_class="GPT2", param_count=124)
    meta = json.loads((w.directory / "meta.json").read_text())
    assert (meta["model_class"], meta["param_count"]) == ("GPT2", 124)
    assert sorted(p.name for p in w.directory.iterdir()) == [
        "events.jsonl",
        "meta.json",
        "samples.jsonl",
    ]  # no temporary left behind
    w.close()


# -- samples ------------------------------------------------------------------------------------


def test_sample_line_fields(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.0)
    s = Sample(
        T0 + 1.5,
        3,
        Phase.BACKWARD,
        'blocks.0."attn"',
        (1, 2, 3, 4, 5, 6, 7, 8),
        36,
        AllocatorReading(allocated=100, reserved=200),
        NvmlReading(process_used=300, device_used=400, device_total=500, device_index=0),
    )
    w.on_sample(s)
    w.close()
    (line,) = lines(w.directory / "samples.jsonl")
    assert line == {
        "v": 1,
        "t": T0 + 1.5,
        "step": 3,
        "phase": "backward",
        "module": 'blocks.0."attn"',
        "bytes": dict(zip([str(c) for c in CATEGORIES], range(1, 9), strict=True)),
        "total": 36,
        "peak": False,
        "allocator": {
            "allocated": 100,
            "reserved": 200,
            "active": None,
            "inactive_split": None,
            "peak_allocated": None,
            "num_alloc_retries": None,
            "num_ooms": None,
        },
        "nvml": {"process_used": 300, "device_used": 400, "device_total": 500, "device_index": 0},
    }


def test_rate_limit_keeps_latest_and_window_peak(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.1)
    w.on_sample(sample(T0 + 0.00, total_scale=1))  # written: first
    w.on_sample(sample(T0 + 0.03, total_scale=5))  # window peak
    w.on_sample(sample(T0 + 0.06, total_scale=2))  # dropped
    w.on_sample(sample(T0 + 0.11, total_scale=3))  # written with the window's peak before it
    w.on_sample(sample(T0 + 0.12, total_scale=1))  # pending ...
    w.on_step(step_record(0, T0 + 0.13, 999))  # ... written by the step end
    w.on_sample(sample(T0 + 0.14, total_scale=4))  # pending, written at close
    w.on_close()
    written = lines(w.directory / "samples.jsonl")
    assert [(round(x["t"] - T0, 2), x["total"] // 36000, x["peak"]) for x in written] == [
        (0.0, 1, False),
        (0.03, 5, True),
        (0.11, 3, False),
        (0.12, 1, False),
        (0.14, 4, False),
    ]


def test_flush_thread_writes_pending_sample(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.05, flush_thread=True)
    now = time.time()
    w.on_sample(sample(now - 1.0))
    w.on_sample(sample(now - 0.99, total_scale=2))  # pending: within the interval
    w._stop.wait(0.5)  # the flusher runs every 0.05 s
    written = lines(w.directory / "samples.jsonl")
    assert [x["total"] // 36000 for x in written] == [1, 2]
    w.close()


def test_step_ends_and_events(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.on_step(step_record(0, T0 + 1, 100))
    w.on_event(Event(T0 + 1, 0, EventKind.STEP_END, "step 0", {"total": 100}))  # left out
    w.on_step(step_record(1, T0 + 2, 300))
    w.on_event(
        Event(T0 + 3, 1, EventKind.LEAK, "grows", {"category": "activations", "weird": {1, 2}})
    )
    w.close()
    records = lines(w.directory / "events.jsonl")
    assert [r["kind"] for r in records] == ["step_end", "step_end", "leak"]
    assert records[1]["data"]["total"] == 300
    assert records[1]["data"]["peak"] == 310
    assert records[1]["data"]["session_peak"] == 310
    assert records[1]["data"]["bytes"]["weights"] == 300
    assert records[2]["data"] == {"category": "activations", "weird": [1, 2]}


def _info(**changes: object) -> SessionInfo:
    fields: dict[str, object] = {
        "name": "stub",
        "mode": "exact",
        "device": "cuda:1",
        "device_type": "cuda",
        "device_index": 1,
        "rounding": 512,
        "capacity": None,
        "gpu_name": None,
        "pid": os.getpid(),
        "step": 3,
        "model_class": "Tiny",
        "param_count": 42,
        "trainable_param_count": 42,
        "optimizer_class": None,
        "observed_batch": None,
        "observed_seq": None,
        "kv_tokens": None,
        "kv_cache_reused": False,
        "autocast_dtype": None,
        "checkpointing": None,
        "attention_impl": None,
        "training": True,
        "start_time": T0,
        "end_time": T0 + 5,
        "session_dir": None,
        "home": None,
    }
    fields.update(changes)
    return SessionInfo(**fields)  # type: ignore[arg-type]


class _Run:
    """A finished run as a :class:`RunView` (what the writer may read of it)."""

    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self.samples: list[Sample] = []
        self.steps: list[StepRecord] = []
        self.failure: Failure | None = None
        self.predicted: dict[Category, int | None] = {
            c: (10 if c == Category.WEIGHTS else None) for c in CATEGORIES
        }
        self.device_total: int | None = None
        self.model: object = None
        # weights 1000 now and at the peak; activations 234 at the peak, 300 at their highest.
        self.peaks = Peaks(
            total=1234,
            at_peak=(1000, 0, 0, 0, 234, 0, 0, 0),
            by_category=(1000, 0, 0, 0, 300, 0, 0, 0),
            current=(1000, 0, 0, 0, 0, 0, 0, 0),
        )

    def module_activity(self) -> list[ModuleActivity]:
        return [
            ModuleActivity("a", 1, 500, 500, 600, None),
            ModuleActivity("b", 1, 700, 700, 800, None),
            ModuleActivity("c", 1, 0, 0, 0, None),  # saved nothing: left out
            ModuleActivity("d", 1, None, None, None, None),  # not measured: left out
        ]

    def live_storages(self) -> list[LiveStorage]:
        return []

    def kv_caches(self) -> list[object]:
        return []


def test_run_meta_summary_and_modules(tmp_path: Path) -> None:
    run = _Run(_info(home=str(tmp_path)))
    view: RunView = run  # mypy checks the fake against the protocol
    w = SessionWriter.for_run(view)
    assert w.directory.parent == tmp_path / "sessions"  # the home comes from run.info
    assert w.directory.name.endswith(f"-{os.getpid()}-stub")
    w.on_start(view)
    meta = json.loads((w.directory / "meta.json").read_text())
    assert (meta["name"], meta["pid"], meta["start_time"]) == ("stub", os.getpid(), T0)
    assert (meta["device"], meta["device_type"], meta["device_index"]) == ("cuda:1", "cuda", 1)
    assert (meta["mode"], meta["model_class"], meta["param_count"]) == ("exact", "Tiny", 42)
    assert "capacity" not in meta  # not simulated
    assert meta["predicted"]["weights"] == 10 and meta["predicted"]["activations"] is None
    w.on_close(run, None)
    summary = json.loads((w.directory / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["error"] is None
    body = summary["summary"]
    assert (body["name"], body["mode"], body["device"], body["steps"]) == (
        "stub",
        "exact",
        "cuda:1",
        3,
    )
    assert (body["peak_bytes"], body["current_bytes"], body["oom"]) == (1234, 1000, False)
    assert (body["start_time"], body["end_time"], body["capacity"]) == (T0, T0 + 5, None)
    assert body["categories"]["weights"] == {
        "current": 1000,
        "peak": 1000,
        "at_peak": 1000,
        "predicted": 10,
    }
    assert body["categories"]["activations"] == {
        "current": 0,
        "peak": 300,
        "at_peak": 234,
        "predicted": None,
    }
    modules = json.loads((w.directory / "modules.json").read_text())
    assert modules["activations"] == [["b", 700], ["a", 500]]


def test_close_with_error_records_it(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.on_close(None, RuntimeError("boom"))
    summary = json.loads((w.directory / "summary.json").read_text())
    assert (summary["status"], summary["error"]) == ("error", "RuntimeError: boom")


def test_rotation_caps_size_and_reader_follows(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.0, max_bytes=4000)
    r = reader(tmp_path, {4321})
    seen: list[float] = []
    for i in range(60):
        w.on_sample(sample(T0 + i))
        w.flush()
        if i % 7 == 0:
            (view,) = r.poll()
            seen = [p.time for p in view.history]
    (view,) = r.poll()
    seen = [p.time for p in view.history]
    assert seen == [T0 + i for i in range(60)]  # nothing lost across rotations
    assert (w.directory / "samples.1.jsonl").exists()
    sizes = [p.stat().st_size for p in w.directory.glob("samples*.jsonl")]
    assert len(sizes) == 2 and all(size < 4000 + 600 for size in sizes)
    w.close()


def test_write_failure_warns_once_and_never_raises(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.0)
    w._samples._handle.close()  # type: ignore[union-attr]  # as if the disk went away
    # Earlier tests' cyclic garbage (an unclosed file or socket) finalised by a collection in
    # the middle would warn too ("always" shows every ResourceWarning): collect it first, keep
    # the collector off while the writer runs, and count gpumem's own warnings.
    gc.collect()
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            w.on_sample(sample(T0))
            w.on_sample(sample(T0 + 1))
            w.on_close()
    finally:
        gc.enable()
    ours = [c for c in caught if str(c.message).startswith("gpumem")]
    assert len(ours) == 1, [f"{c.category.__name__}: {c.message}" for c in caught]
    assert "session stream" in str(ours[0].message)


# -- reader -------------------------------------------------------------------------------------


def test_reader_live_then_killed_then_gone(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.0)
    w.on_sample(sample(T0 + 1, step=4))
    w.on_step(step_record(4, T0 + 2, 50_000))
    w.flush()
    alive = {4321}
    now = [T0 + 10]
    r = SessionReader(
        tmp_path, clock=lambda: now[0], pid_exists=lambda p: p in alive, host="node-a"
    )
    (view,) = r.poll()
    assert view.live and view.status is None
    assert (view.step, view.current, view.peak) == (4, 50_000, 50_010)
    alive.clear()  # SIGKILL: no summary, pid gone
    (view,) = r.poll()
    assert not view.live and view.status == "killed" and view.end_time == T0 + 2
    now[0] = T0 + 2 + 601
    assert r.poll() == []
    w.close()


def test_reader_orders_live_first_and_summary_ends(tmp_path: Path) -> None:
    a = writer(tmp_path, name="a", pid=1, start_time=T0, clock=lambda: T0 + 3)
    b = writer(tmp_path, name="b", pid=2, start_time=T0 + 1)
    c = writer(tmp_path, name="c", pid=3, start_time=T0 + 2)
    a.on_close()
    r = reader(tmp_path, {1, 2, 3}, now=T0 + 5)
    views = r.poll()
    # "a" has a summary: ended although its pid lives; it comes after the live ones.
    assert [(v.meta.name, v.live, v.status) for v in views] == [
        ("b", True, None),
        ("c", True, None),
        ("a", False, "ok"),
    ]
    b.close()
    c.close()


def test_torn_last_line_waits_for_its_end(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.0)
    w.on_sample(sample(T0 + 1))
    w.flush()
    path = w.directory / "samples.jsonl"
    full = path.read_text()
    w.close()
    r = reader(tmp_path, {4321})
    line = full.replace(str(T0 + 1), str(T0 + 2))
    with open(path, "a") as handle:
        handle.write(line[:40])  # a torn line, as if killed mid-write
    (view,) = r.poll()
    assert [p.time for p in view.history] == [T0 + 1]
    with open(path, "a") as handle:
        handle.write(line[40:])  # the rest arrives
    (view,) = r.poll()
    assert [p.time for p in view.history] == [T0 + 1, T0 + 2]
    assert view.skipped == 0


def test_corrupt_lines_and_lines_of_another_schema(tmp_path: Path) -> None:
    w = writer(tmp_path, interval=0.0)
    w.close()
    path = w.directory / "samples.jsonl"
    good = {"v": 1, "t": T0 + 1, "step": 1, "total": 7, "bytes": {"weights": 7}}
    newer = {"v": 9, "t": T0 + 2, "step": 2, "total": 8, "bytes": {"weights": 8, "new_cat": 5},
             "future": {"x": 1}}  # fmt: skip
    path.write_text(
        json.dumps(good)
        + "\n\x00\x00garbage{{\n"
        + "[1, 2]\n"
        + json.dumps({"v": 1, "t": "soon"})
        + "\n"
        + json.dumps(newer)
        + "\n"
    )
    (view,) = reader(tmp_path, {4321}).poll()
    # a line of another schema version is not misread: it is skipped like a corrupt one
    assert [(p.step, p.total, p.bytes[0]) for p in view.history] == [(1, 7, 7)]
    assert view.skipped == 4


def test_corrupt_meta_and_summary(tmp_path: Path) -> None:
    w = writer(tmp_path, name="broken")
    w.close()
    (w.directory / "meta.json").write_text('{"name": "bro')
    (w.directory / "summary.json").write_bytes(b"\xff\xfe not json")
    (view,) = reader(tmp_path, set(), now=time.time() + 1).poll()
    assert (view.meta.name, view.meta.pid, view.meta.host) == ("broken", 4321, "node_a")
    assert view.live is False and view.status == "unreadable"
    assert view.skipped == 2
    assert view.error == "meta.json unreadable"


def test_initial_read_takes_the_tail_only(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(1000)))
    tail = JsonlTail(path, initial_bytes=100)
    got = [r["i"] for r in tail.read()]
    assert got == list(range(1000 - len(got), 1000)) and 5 <= len(got) <= 10
    with open(path, "a") as handle:
        handle.write(json.dumps({"i": 1000}) + "\n")
    assert tail.read() == [{"i": 1000}]
    path.write_text(json.dumps({"i": -1}) + "\n")  # truncated and rewritten
    assert tail.read() == [{"i": -1}]
    tail.close()


def test_prune_keeps_live_and_newest_ended(tmp_path: Path) -> None:
    made = [writer(tmp_path, name=f"s{i}", pid=100 + i, start_time=T0 + i) for i in range(5)]
    for w in made[:4]:
        w.on_close()
    made[4].close()  # no summary, pid 104 alive: live
    removed = prune_sessions(tmp_path, keep=2, pid_exists=lambda p: p == 104, host="node-a")
    assert [p.name.split("-")[-1] for p in removed] == ["s0", "s1"]
    left = sorted(p.name.split("-")[-1] for p in (tmp_path / "sessions").iterdir())
    assert left == ["s2", "s3", "s4"]


# -- a real process killed with SIGKILL ----------------------------------------------------------


def test_sigkill_loses_at_most_the_last_interval(tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import sys, time
        from profiler.records import Phase, Sample
        from profiler.session.writer import SessionWriter
        w = SessionWriter.create(home={str(tmp_path)!r}, name="killed", interval=0.05)
        t = time.time()
        for i in range(200):
            w.on_sample(Sample(t + i * 0.001, i, Phase.FORWARD, None, (i,) + (0,) * 7, i))
        print(w.directory, flush=True)
        time.sleep(60)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        directory = Path(proc.stdout.readline().strip())
        # The flusher writes the pending sample and flushes within one interval (0.05 s).
        for _ in range(100):
            text = (directory / "samples.jsonl").read_text()
            if text.endswith("\n") and json.loads(text.splitlines()[-1])["step"] == 199:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    steps = [
        json.loads(line)["step"] for line in (directory / "samples.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == 199  # the latest sample made it to disk before the kill
    assert not (directory / "summary.json").exists()
    (view,) = SessionReader(tmp_path).poll()
    assert view.status == "killed" and view.step == 199


def test_profiler_stream_imports_no_textual_or_pandas() -> None:
    code = (
        "import sys, profiler.session.writer, profiler.session.reader;"
        "print(sorted(m for m in ('textual', 'pandas', 'rich') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_a_reused_pid_does_not_keep_a_session_alive() -> None:
    now = time.time()
    assert _process_alive(os.getpid(), now) is True
    # A session that started an hour before this process cannot be this process.
    assert _process_alive(os.getpid(), now - 3600) is False


def test_session_of_another_host_lives_while_its_files_change(tmp_path: Path) -> None:
    w = writer(tmp_path, host="other-node", interval=0.0)
    w.on_sample(sample(T0))
    w.close()
    mtime = os.stat(w.directory / "samples.jsonl").st_mtime
    calls: list[int] = []

    def pid_exists(pid: int) -> bool:
        calls.append(pid)
        return False

    fresh = SessionReader(tmp_path, clock=lambda: mtime + 30, pid_exists=pid_exists, host="node-a")
    (view,) = fresh.poll()
    assert view.live and calls == []  # another host's pid is never looked up here
    stale = SessionReader(tmp_path, clock=lambda: mtime + 61, pid_exists=pid_exists, host="node-a")
    (view,) = stale.poll()
    assert not view.live and view.status == "killed"
