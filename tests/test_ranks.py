"""Rank, local rank, world size and job id: from the launcher's environment or the process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from profiler import track_memory
from profiler.ranks import Ranks, current_ranks

ROOT = Path(__file__).resolve().parent.parent


def test_torchrun_environment() -> None:
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "abc"}
    assert current_ranks(env) == Ranks(3, 1, 8, "abc")


def test_torchrun_without_a_run_id_is_grouped_by_its_rendezvous() -> None:
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "TORCHELASTIC_RUN_ID": "none",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
    }
    assert current_ranks(env) == Ranks(0, 0, 2, "10.0.0.1:29500")


def test_slurm_environment() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "77"}
    assert current_ranks(env) == Ranks(5, 1, 16, "77")


def test_gpumem_job_id_wins_and_plain_processes_have_none() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_JOB_ID": "77", "GPUMEM_JOB_ID": "mine"}
    assert current_ranks(env) == Ranks(1, None, 2, "mine")
    assert current_ranks({}) == Ranks()
    assert current_ranks({"RANK": "x"}) == Ranks()


def test_meta_follows_ranks_that_appear_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("GPUMEM_HOME", str(home))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    with track_memory(name="late") as mem:
        meta_path = Path(mem.session_dir) / "meta.json"
        first = json.loads(meta_path.read_text())
        assert (first["rank"], first["world_size"], first["job_id"]) == (None, None, None)
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-9")
        mem.step()
        assert (mem.rank, mem.world_size, mem.job_id) == (1, 4, "job-9")
    meta = json.loads(meta_path.read_text())
    assert (meta["rank"], meta["local_rank"], meta["world_size"], meta["job_id"]) == (
        1,
        1,
        4,
        "job-9",
    )
    assert (mem.info.rank, mem.info.world_size, mem.info.job_id) == (1, 4, "job-9")


def test_process_group_created_inside_the_block(tmp_path: Path) -> None:
    # a one-rank gloo group on 127.0.0.1, created after tracking started; rank 0 of world 1
    # even though the environment says nothing about ranks
    script = f"""
import json, torch.distributed as dist
from profiler import track_memory
with track_memory(name="pg") as mem:
    before = (mem.rank, mem.world_size)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    mem.step()
    after = (mem.rank, mem.world_size)
dist.destroy_process_group()
print(json.dumps([before, after, str(mem.session_dir)]))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT), GPUMEM_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, directory = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == [None, None]
    assert after == [0, 1]
    meta = json.loads((Path(directory) / "meta.json").read_text())
    assert (meta["rank"], meta["world_size"]) == (0, 1)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
