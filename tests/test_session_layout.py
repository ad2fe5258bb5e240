"""The on-disk layout (session/layout.py): directory names written and parsed in one place."""

from __future__ import annotations

import calendar
from pathlib import Path

from profiler.session.layout import (
    SessionName,
    format_session_name,
    host_matches,
    make_session_dir,
    parse_session_name,
    safe_name,
)

T0 = calendar.timegm((2027, 1, 15, 8, 0, 0)) + 0.25


def test_name_round_trip() -> None:
    name = format_session_name(T0, "node-a.local", 4321, "my-train job")
    assert name == "20270115T080000.250000-node_a.local-4321-my_train_job"
    assert parse_session_name(name) == SessionName(T0, "node_a.local", 4321, "my_train_job")


def test_suffix_and_malformed_names() -> None:
    assert parse_session_name("20270115T080000.250000-h-1-x-2") == SessionName(T0, "h", 1, "x")
    assert parse_session_name("20270115T080000-h-1-x") == SessionName(None, "h", 1, "x")
    assert parse_session_name("not-a-session") is None
    assert parse_session_name("20270115T080000.250000-h-pid-x") is None


def test_make_session_dir_is_unique(tmp_path: Path) -> None:
    first = make_session_dir(tmp_path, T0, "h", 7, "run")
    second = make_session_dir(tmp_path, T0, "h", 7, "run")
    assert (first.name, second.name) == (
        "20270115T080000.250000-h-7-run",
        "20270115T080000.250000-h-7-run-2",
    )
    assert first.stat().st_mode & 0o777 == 0o700


def test_safe_name_and_host_matches() -> None:
    assert safe_name("..a-b c/d..") == "a_b_c_d"
    assert safe_name("---") == "session"
    assert len(safe_name("x" * 100)) == 48
    assert host_matches("node_a", "node-a") and host_matches("node-a", "node-a")
    assert host_matches(None, "node-a") and not host_matches("node-b", "node-a")
