"""A second unix user, for real: another user's process against this user's gpumem home.

Runs where the tests run as root (CI does): the other user is ``nobody`` (uid 65534), acting
through a real process (``subprocess`` with ``user=``); elsewhere the tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from profiler import track_memory
from profiler.errors import StreamError
from profiler.session.layout import sessions_dir

NOBODY = 65534
pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as a second user"
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory the other user can reach (pytest's own tmp_path sits in a 0700 root dir)."""
    path = Path(tempfile.mkdtemp(prefix="gpumem-users-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``sh -c script`` as the other user."""
    return subprocess.run(
        ["sh", "-c", script],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_another_users_process_cannot_read_plant_or_redirect_my_sessions(
    shared_tmp: Path,
) -> None:
    tmp_path = shared_tmp
    tmp_path.chmod(0o755)  # the other user may walk up to the home, not into it
    assert as_nobody(f"ls {tmp_path}", tmp_path).returncode == 0  # the probes below can fail
    home = tmp_path / "mine"
    model = torch.nn.Linear(4, 4)
    with track_memory(model, home=home, name="private") as mem:
        model(torch.randn(2, 4))
        mem.step()
    session = Path(mem.session_dir)
    assert (home.stat().st_mode & 0o777) == 0o700
    probes = {
        "list": f"ls {home}/sessions",
        "read": f"cat {session}/meta.json",
        "plant": f"mkdir {home}/sessions/planted",
        "swap": f"mv {session} {tmp_path}/stolen && ln -s /etc {session}",
    }
    for name, script in probes.items():
        done = as_nobody(script, tmp_path)
        assert done.returncode != 0, name
        assert "Permission denied" in done.stderr, (name, done.stderr)
    assert session.is_dir() and not session.is_symlink()
    assert sorted(p.name for p in (home / "sessions").iterdir()) == [session.name]


def test_a_home_another_user_made_is_refused_and_tracking_goes_on(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    tmp_path.chmod(0o777)  # a shared parent where the other user can make the home first
    home = tmp_path / "shared"
    made = as_nobody(f"mkdir -m 700 {home} && mkdir -m 700 {home}/sessions", tmp_path)
    assert made.returncode == 0, made.stderr
    assert home.stat().st_uid == NOBODY
    with pytest.raises(StreamError, match="belongs to another user"):
        sessions_dir(home)
    model = torch.nn.Linear(4, 4)
    with (
        pytest.warns(RuntimeWarning, match="session stream is off"),
        track_memory(model, home=home) as mem,
    ):
        model(torch.randn(2, 4))
    assert mem.session_dir is None  # nothing written into the other user's home
    assert mem.breakdown().loc["weights", "current"] == (4 * 4 + 4) * 4
    top = subprocess.run(
        [sys.executable, "-m", "profiler", "top", "--once", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert top.returncode == 1
    assert len(top.stderr.strip().splitlines()) == 1 and "belongs to another user" in top.stderr
