"""The dashboard's data model and text frames: snapshots, OOM risk, alerts, ``--once``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripted import (
    FIXED_TIME,
    GIB,
    LEAK,
    MIB,
    SUGGESTION,
    ScriptedSessions,
    ScriptedSource,
    gpus,
    make_session,
    processes,
    scripted_builder,
)

from profiler.cli import main
from profiler.errors import BackendUnavailable
from profiler.records import Phase, Sample
from profiler.session.reader import SessionEvent
from profiler.session.writer import SessionWriter
from tui.snapshot import (
    EMPTY_SNAPSHOT,
    Snapshot,
    SnapshotBuilder,
    alerts_for,
    format_duration,
    oom_risk,
    session_capacity,
    sort_processes,
)
from tui.widgets.render import buckets, frame_text, snapshot_to_dict, sparkline


def test_empty_snapshot_is_the_sentinel() -> None:
    assert Snapshot(time=0.0) == EMPTY_SNAPSHOT
    assert EMPTY_SNAPSHOT.sessions == () and EMPTY_SNAPSHOT.device_error is None


def test_failing_sources_show_messages_not_crashes() -> None:
    source = ScriptedSource(
        device_error=RuntimeError("GPU is lost\nsecond line"), process_error=OSError("denied")
    )
    sessions = ScriptedSessions()
    sessions.error = PermissionError("home unreadable")
    snap = SnapshotBuilder(source, sessions, clock=lambda: FIXED_TIME).build()
    assert snap.device_error == "devices unavailable: GPU is lost"
    assert snap.process_error == "processes unavailable: denied"
    assert snap.session_error == "sessions unavailable: home unreadable"
    assert (snap.devices, snap.processes, snap.sessions, snap.time) == ((), (), (), FIXED_TIME)


def test_source_factory_runs_once_and_its_error_is_the_banner() -> None:
    calls = []

    def factory() -> ScriptedSource:
        calls.append(1)
        raise BackendUnavailable("NVML library not available", hint="install the driver")

    builder = SnapshotBuilder(None, None, clock=lambda: FIXED_TIME, source_factory=factory)
    first = builder.build()
    second = builder.build()
    assert calls == [1]
    assert first.device_error == second.device_error
    assert first.device_error == "NVML library not available (hint: install the driver)"


def test_oom_risk_is_time_to_capacity_at_the_recent_growth() -> None:
    session = make_session(growth=64 * MIB)
    capacity = session_capacity(session, gpus(1))
    assert capacity == 80 * GIB
    risk = oom_risk(session, capacity)
    assert risk is not None
    assert risk.growth_per_step == pytest.approx(64 * MIB)
    assert risk.growth_per_second == pytest.approx(64 * MIB)
    assert risk.current == 14 * GIB + 1472 * MIB
    assert risk.seconds_to_capacity == pytest.approx((80 * GIB - risk.current) / (64 * MIB))
    assert format_duration(risk.seconds_to_capacity) == "17m13s"
    flat = make_session(growth=0)
    assert oom_risk(flat, capacity).seconds_to_capacity is None  # type: ignore[union-attr]
    assert oom_risk(make_session(steps=2, growth=GIB), capacity) is None  # too few steps


def test_capacity_prefers_simulated_then_device() -> None:
    assert session_capacity(make_session(capacity=24 * GIB), gpus(1)) == 24 * GIB
    assert session_capacity(make_session(device="cuda:1"), gpus(2)) == 80 * GIB
    assert session_capacity(make_session(device="cuda:3"), gpus(2)) is None
    assert session_capacity(make_session(device="cpu"), gpus(2)) is None


def test_alerts_most_severe_first_with_fixes() -> None:
    session = make_session(growth=64 * MIB, events=(LEAK, SUGGESTION))
    alerts = alerts_for(session, gpus(1))
    assert [(a.severity, a.kind) for a in alerts] == [
        ("warning", "oom_risk"),
        ("warning", "leak"),
        ("info", "suggestion"),
    ]
    assert alerts[0].title == (
        "OOM risk: full in 17m13s at +64.00 MiB/step (15.44 GiB of 80.00 GiB)"
    )
    assert alerts[1].title == "activations grow 64.00 MiB/step at train.py:57"
    assert alerts[1].fix == "append loss.item(), not loss, to the history list"
    assert alerts[2].title == "activation checkpointing (saves 4.00 GiB), fits"


def test_long_leak_message_is_trimmed_and_fix_not_repeated() -> None:
    fix = "store loss.item() instead"
    event = SessionEvent(
        FIXED_TIME, 3, "leak", "leak: " + "x" * 300 + " " + fix, {"suggestion": fix}
    )
    (alert,) = alerts_for(make_session(growth=0, events=(event,)), [])
    assert alert.fix == fix
    assert len(alert.title) == 200 and alert.title.endswith("x…")


def test_near_capacity_without_growth_warns() -> None:
    session = make_session(growth=0, capacity=15 * GIB)
    (alert,) = alerts_for(session, [])
    assert alert.title == "peak 14.25 GiB is 95% of 15.00 GiB"


def test_sort_processes_each_key() -> None:
    rows = processes(4)
    assert [p.pid for p in sort_processes(rows, "memory")] == [1014, 1007, 1021, 1000]
    assert [p.pid for p in sort_processes(rows, "pid")] == [1000, 1007, 1014, 1021]
    assert [p.user for p in sort_processes(rows, "user")] == ["alice", "bob", "carol", "dave"]
    assert [p.pid for p in sort_processes(rows, "command")] == [1000, 1007, 1014, 1021]


def test_sparkline_scales_min_to_max() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5], 10) == "▄▄▄"
    assert sparkline([1, 2, 3, 4], 2) == "▁█"  # squeezed: the maximum of each half
    assert buckets([5, 1, 1, 1, 1, 9, 1, 1, 1], 3) == [5, 9, 1]


def test_frame_text_golden() -> None:
    builder = scripted_builder(
        sessions=[make_session("train", 4242, growth=64 * MIB, events=(LEAK,))]
    )
    builder.source.process_list = processes(2)  # type: ignore[union-attr]
    text = frame_text(builder.build(), width=100)
    assert text == (
        "gpumem top  2027-01-15 08:00:00 UTC\n"
        "\n"
        "DEVICES\n"
        "GPU0 NVIDIA H100 80GB HBM3 [████░░░░░░░░░░░░░░░░░░░░░░░░] 10.00 GiB / 80.00 GiB util 30% 40°C 300 W\n"
        "GPU1 NVIDIA H100 80GB HBM3 [█████████░░░░░░░░░░░░░░░░░░░] 27.00 GiB / 80.00 GiB util 53% 43°C 310 W\n"
        "\n"
        "PROCESSES\n"
        "  PID  USER   GPU    MEMORY  COMMAND\n"
        " 1007  bob      1  6.00 GiB  python train_1.py --batch 16\n"
        " 1000  alice    0  1.00 GiB  python train_0.py --batch 8\n"
        "\n"
        "SESSIONS\n"
        " NAME   PID   RANK  DEVICE  STEP  CURRENT   PEAK       STATUS\n"
        " train  4242  -     cuda:0  19    9.44 GiB  15.44 GiB  live\n"
        "\n"
        "ALERTS train (pid 4242)\n"
        "WARNING  OOM risk: full in 17m13s at +64.00 MiB/step (15.44 GiB of 80.00 GiB)\n"
        "         fix: look for tensors kept across steps (appended losses, caches, hooks)\n"
        "WARNING  activations grow 64.00 MiB/step at train.py:57\n"
        "         fix: append loss.item(), not loss, to the history list\n"
    )


def test_frame_text_without_gpu() -> None:
    text = frame_text(scripted_builder(no_gpu=True, sessions=[]).build())
    assert text.splitlines()[2:8] == [
        "DEVICES",
        "No GPU: NVML library not available (NVML Shared Library Not Found)",
        "",
        "PROCESSES",
        "none",
        "",
    ]


def test_snapshot_to_dict() -> None:
    doc = snapshot_to_dict(scripted_builder().build())
    json.dumps(doc)  # JSON-able
    assert doc["v"] == 1 and doc["time"] == FIXED_TIME
    assert doc["errors"] == {"devices": None, "processes": None, "sessions": None}
    assert [d["memory_used"] for d in doc["devices"]] == [10 * GIB, 27 * GIB]
    assert [p["pid"] for p in doc["processes"]] == [1014, 1007, 1021, 1000]
    train, evaluation, old = doc["sessions"]
    assert (train["name"], train["live"], train["step"], train["capacity"]) == (
        "train",
        True,
        19,
        80 * GIB,
    )
    assert train["bytes"]["activations"] == 19 * 64 * MIB
    assert [a["kind"] for a in train["alerts"]] == ["oom_risk", "leak", "suggestion"]
    assert train["top_modules"][0] == ["transformer.h.3.mlp", 900 * MIB]
    assert (evaluation["rank"], evaluation["world_size"]) == (1, 2)
    assert (old["live"], old["status"]) == (False, "ok")


# -- the command line -----------------------------------------------------------------------------


def test_cli_once_text_and_json_read_the_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer = SessionWriter.create(home=tmp_path, name="cli", interval=0.0, flush_thread=False)
    values = (GIB, 0, 0, 0, 0, 0, 0, 0)
    writer.on_sample(Sample(FIXED_TIME, 3, Phase.FORWARD, None, values, GIB))
    writer.close()  # still live: this process exists and there is no summary
    assert main(["top", "--once", "--demo", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GPU0 NVIDIA H100 80GB HBM3" in out
    (row,) = [line for line in out.splitlines() if line.startswith(" cli ")]
    assert row.split() == ["cli", str(writer.meta["pid"]), "-", "-", "3", "1.00", "GiB", "1.00",
                           "GiB", "live"]  # fmt: skip
    assert main(["top", "--once", "--json", "--demo", "--home", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["step"], s["current"]) for s in doc["sessions"]] == [("cli", 3, GIB)]
    assert len(doc["devices"]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0"], "gpumem top: error: --interval must be positive, got '0'"),
        (["--interval", "fast"], "gpumem top: error: --interval must be a number, got 'fast'"),
        (["--json"], "gpumem top: error: --json needs --once (hint: gpumem top --once --json)"),
        (
            ["--once", "--sort", "size"],
            "gpumem top: error: unknown sort 'size' (hint: use one of memory, pid, user, command)",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["top", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert captured.out == ""


def test_cli_home_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    assert main(["top", "--once", "--home", str(path)]) == 2
    assert capsys.readouterr().err == f"gpumem top: error: --home '{path}' is not a directory\n"


def test_cli_without_terminal_points_to_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--demo"]) == 2
    assert "use gpumem top --once [--json]" in capsys.readouterr().err


def _gpumem_without_textual(*argv: str) -> subprocess.CompletedProcess[str]:
    """``gpumem ARGV`` in a fresh interpreter where ``import textual`` fails, as if not installed."""
    code = (
        "import sys\n"
        "sys.modules['textual'] = None  # any import of textual now raises ModuleNotFoundError\n"
        "from profiler.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('tui.app' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    repo = str(Path(__file__).resolve().parents[2])
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=repo),
    )


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_once_needs_no_textual(extra: list[str], tmp_path: Path) -> None:
    out = _gpumem_without_textual("top", "--once", *extra, "--demo", "--home", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "False"  # the Textual app was never imported
    if extra:
        frame = json.loads(out.stdout.rsplit("\n", 2)[0])
        assert frame["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
    else:
        assert "GPU0 NVIDIA H100 80GB HBM3" in out.stdout


def test_dashboard_without_textual_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = _gpumem_without_textual("top", "--demo", "--home", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr == (
        "gpumem top: error: the live dashboard needs Textual, which is not installed "
        "(hint: pip install 'textual>=0.80', or use gpumem top --once [--json] without it)\n"
    )
