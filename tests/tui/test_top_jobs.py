"""``gpumem top --once`` groups a distributed job's sessions, and ``gpumem job`` prints its ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler.records import Phase, Sample, StepRecord
from profiler.session.writer import SessionWriter

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024**2


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """Job "j1": ranks 0-2 of 4 (peaks 10, 12, 16 MiB; rank 1 one step behind); a plain session."""
    home = tmp_path / "home"
    start = time.time()
    writers = []
    for rank, (peak, steps) in enumerate([(10, 3), (12, 2), (16, 3)]):
        writer = SessionWriter.create(
            home=home,
            name="train",
            start_time=start + rank * 1e-3,
            interval=0.0,
            flush_thread=False,
            prune=False,
            device="cpu",
            rank=rank,
            local_rank=rank,
            world_size=4,
            job_id="j1",
            capacity=32 * MIB,
        )
        for step in range(steps):
            values = (peak * MIB, 0, 0, 0, 0, 0, 0, 0)
            writer.on_sample(Sample(start + step, step, Phase.FORWARD, None, values, peak * MIB))
            writer.on_step(
                StepRecord(step, start + step + 0.5, 0.5, values, peak * MIB, peak * MIB, values)
            )
        writer.flush()
        writers.append(writer)
    alone = SessionWriter.create(
        home=home, name="alone", start_time=start + 1, interval=0.0, flush_thread=False
    )
    alone.flush()
    yield home
    for writer in [*writers, alone]:
        writer.close()


def gpumem(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "profiler.cli", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def top_once(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tui", "--once", "--home", str(home), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_top_once_json_groups_the_job(home: Path) -> None:
    done = top_once(home, "--json")
    assert done.returncode == 0, done.stderr
    frame = json.loads(done.stdout)
    assert [j["job_id"] for j in frame["jobs"]] == ["j1"]
    job = frame["jobs"][0]
    assert (job["ranks_seen"], job["world_size"]) == (3, 4)
    assert (job["min_peak"], job["max_peak"]) == (10 * MIB, 16 * MIB)
    assert job["mean_peak"] == pytest.approx(38 * MIB / 3)
    assert job["imbalance"] == pytest.approx(6 / 16)
    assert (job["nearest_rank"], job["nearest_share"]) == (2, 0.5)  # 16 of 32 MiB
    assert (job["slowest_rank"], job["slowest_step"]) == (1, 1)
    assert [r["rank"] for r in job["ranks"]] == [0, 1, 2]
    alone = [s for s in frame["sessions"] if s["name"] == "alone"]
    assert len(alone) == 1 and alone[0]["job_id"] is None


def test_top_once_text_has_one_row_per_job(home: Path) -> None:
    done = top_once(home)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    jobs = lines.index("JOBS")
    assert lines[jobs + 1].split() == [
        "JOB", "RANKS", "PEAK", "MIN", "MAX", "MEAN", "IMBALANCE", "NEAREST", "SLOWEST"
    ]  # fmt: skip
    assert lines[jobs + 2].split() == [
        "j1", "3/4", "10.00", "MiB", "16.00", "MiB", "12.67", "MiB", "38%", "rank", "2", "50%",
        "rank", "1", "step", "1",
    ]  # fmt: skip


def test_gpumem_job_prints_the_ranks(home: Path) -> None:
    done = gpumem("job", "j1", "--home", str(home))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("job j1: 3/4 ranks · peak min 10.00 MiB max 16.00 MiB")
    assert "nearest capacity rank 2 (50%) · slowest rank 1 at step 1" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["0", "1", "2"]
    data = json.loads(gpumem("job", "j1", "--json", "--home", str(home)).stdout)
    assert [r["peak"] for r in data["ranks"]] == [10 * MIB, 12 * MIB, 16 * MIB]
    missing = gpumem("job", "nope", "--home", str(home))
    assert missing.returncode == 1
    assert missing.stderr.strip() == "gpumem job: error: no sessions of job 'nope' (jobs seen: j1)"
