"""A real tracked program in a subprocess: its session appears, advances and ends in the reader.

Runs ``recipes/train_dashboard.py`` for a few seconds with ``GPUMEM_HOME`` in a temporary
directory, and watches it through :class:`~profiler.session.reader.SessionReader` and
``gpumem top --once --json``, the same way a user's second terminal would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from profiler.session.reader import SessionReader, SessionView

REPO = Path(__file__).resolve().parents[2]


def wait_for(reader: SessionReader, predicate, timeout: float = 60.0) -> SessionView:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = reader.poll()
        for view in views:
            if predicate(view):
                return view
        time.sleep(0.1)
    raise AssertionError(f"timed out; sessions: {[(v.meta.name, v.step, v.live) for v in views]}")


def test_recipe_session_appears_advances_and_ends(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), GPUMEM_HOME=str(tmp_path))
    command = [
        sys.executable,
        str(REPO / "recipes" / "train_dashboard.py"),
        "--seconds", "120", "--stop-file", str(tmp_path / "stop"), "--device", "cpu", "--batch", "4", "--length", "16", "--name", "live-test",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        reader = SessionReader(tmp_path)
        first = wait_for(reader, lambda v: v.meta.name == "live-test" and v.live)
        assert first.meta.pid == proc.pid
        assert first.meta.device == "cpu"
        assert first.meta.model_class == "TinyTransformer"
        assert first.meta.param_count == sum(
            [512 * 128, 256 * 128, 2 * 198_272, 2 * 128, 128 * 512 + 512]
        )
        # `gpumem top --once --json` (here `python -m tui`, the dashboard's own entry) in yet
        # another process sees the live session too.
        once = subprocess.run(
            [sys.executable, "-m", "tui", "--once", "--json", "--home", str(tmp_path)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert once.returncode == 0, once.stderr
        (row,) = [s for s in json.loads(once.stdout)["sessions"] if s["name"] == "live-test"]
        assert row["pid"] == proc.pid and row["live"] is True
        advanced = wait_for(reader, lambda v: v.live and v.step is not None and v.step >= 2)
        assert advanced.current is not None and advanced.history
        assert advanced.steps[-1].bytes[0] == advanced.steps[-1].total - sum(
            advanced.steps[-1].bytes[1:]
        )
        (tmp_path / "stop").touch()
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = wait_for(reader, lambda v: v.meta.name == "live-test" and not v.live, timeout=10)
    assert ended.status == "ok"
    assert ended.summary is not None and ended.summary["name"] == "live-test"
    assert ended.summary["steps"] >= ended.step
    assert ended.peak == ended.summary["peak_bytes"]
    directory = Path(ended.meta.directory)
    assert sorted(p.name for p in directory.iterdir()) == [
        "events.jsonl",
        "meta.json",
        "modules.json",
        "samples.jsonl",
        "summary.json",
    ]
    modules = json.loads((directory / "modules.json").read_text())["activations"]
    assert modules and all(isinstance(n, str) and v > 0 for n, v in modules)
