"""A real 2-rank job (torchrun, gloo on 127.0.0.1, CPU): FSDP2 and DDP figures per rank.

The job (tests/distributed/job.py) runs once for the module; each rank measures the same FSDP2
model with torch's ``FSDPMemTracker`` and with gpumem, and a DDP model untracked (glibc's heap
counter) and tracked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests" / "distributed" / "job.py"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(script: Path, home: Path, out: Path, *, timeout: float = 240, **env: str) -> int:
    """Run ``script`` on 2 ranks; returns the master port (part of the job id)."""
    home.mkdir(mode=0o700, exist_ok=True)
    out.mkdir(exist_ok=True)
    port = free_port()
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GPUMEM_HOME": str(home),
        "GPUMEM_TEST_OUT": str(out),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "GPUMEM_JOB_ID"):
        environ.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(script),
    ]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return port


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("job")
    port = torchrun(JOB, base / "home", base / "out")
    ranks = [json.loads((base / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"port": port, "ranks": ranks, "home": base / "home"}


def test_fsdp2_peak_and_current_match_fsdpmemtracker(job: dict) -> None:
    for rank in job["ranks"]:
        fsdp = rank["fsdp"]
        assert abs(fsdp["peak"] - fsdp["torch_peak"]) <= 0.05 * fsdp["torch_peak"]
        assert abs(fsdp["current"] - fsdp["torch_current"]) <= 0.05 * fsdp["torch_current"]


def test_fsdp2_weights_are_the_local_padded_shard(job: dict) -> None:
    # 3 × (Linear(256, 511) + Linear(511, 256)) over 2 ranks, dim 0 sharded and padded to
    # ceil(rows / 2): 256×256 + 256 + 128×511 + 128 fp32 per layer
    shard = 3 * (256 * 256 + 256 + 128 * 511 + 128) * 4
    for rank in job["ranks"]:
        fsdp = rank["fsdp"]
        assert fsdp["shard_bytes"] == shard
        assert fsdp["weights"] == shard
        assert fsdp["predicted_weights"] == shard
        assert fsdp["sublabels"]["sharded_param"]["current"] == shard
        assert fsdp["other"] == 0  # nothing counted twice
        assert fsdp["optimizer"] == fsdp["predicted_optimizer"]
        # compare()'s independent figure reads FSDP's own padded shard sizes: it agrees with the
        # prediction; the measured column is the weights' peak, which holds the parameters
        # gathered for forward and backward too, and the check says so
        assert fsdp["reference_weights"] == shard
        assert fsdp["compared_weights"] == fsdp["peak_weights"] > shard
        assert fsdp["check_weights"] == "measured differs"


def test_fsdp2_gathers_are_named(job: dict) -> None:
    # one layer gathered whole: 511×256 + 511 + 256×511 + 256 fp32
    layer = (511 * 256 + 511 + 256 * 511 + 256) * 4
    for rank in job["ranks"]:
        labels = rank["fsdp"]["sublabels"]
        assert labels["unsharded_param"]["current"] == 0  # resharded after use
        assert labels["unsharded_param"]["peak"] >= layer
        assert labels["all_gather"]["category"] == "weights"
        assert labels["all_gather"]["peak"] >= layer
        assert labels["reduce_scatter"]["category"] == "gradients"
        assert labels["reduce_scatter"]["current"] == 0


def test_ddp_buckets_are_gradients_and_current_matches_untracked(job: dict) -> None:
    for rank in job["ranks"]:
        ddp = rank["ddp"]
        params = (512 * 1024 + 1024 + 1024 * 512 + 512) * 4
        assert ddp["param_bytes"] == params
        bucket = ddp["sublabels"]["ddp_bucket"]
        assert bucket == {"category": "gradients", "current": params, "peak": params}
        assert ddp["temporaries"] == 0
        # weights + momentum + bucket, against glibc's heap counter of the same run untracked
        assert ddp["current"] == 3 * params
        assert abs(ddp["current"] - ddp["untracked_current"]) <= 0.05 * ddp["untracked_current"]


def test_ranks_come_from_the_launcher_before_the_process_group(job: dict) -> None:
    job_id = f"127.0.0.1:{job['port']}"
    for r, rank in enumerate(job["ranks"]):
        assert rank["env_rank"] == [r, 2, job_id]
        meta = json.loads((Path(rank["early_dir"]) / "meta.json").read_text())
        assert (meta["rank"], meta["local_rank"], meta["world_size"], meta["job_id"]) == (
            r,
            r,
            2,
            job_id,
        )


@pytest.mark.parametrize(
    ("recipe", "lines"),
    [
        (
            "ddp.py",
            [
                # Linear(256, 1024) + Linear(1024, 256) fp32: 2.00 MiB; DDP's bucket doubles
                # the gradients, predicted so
                "gradients        2.00 MiB     4.01 MiB     4.01 MiB     4.01 MiB    +0.0%",
                "  gradients · ddp_bucket       current    2.00 MiB   peak    2.00 MiB",
            ],
        ),
        (
            "fsdp2.py",
            [
                # 4 blocks of 2.00 MiB, half on each rank
                "    weights · sharded_param    current    4.01 MiB   peak    4.01 MiB",
                "optimizer        8.02 MiB     8.02 MiB     8.02 MiB     8.02 MiB    +0.0%",
            ],
        ),
    ],
)
def test_distributed_recipes_run_with_torchrun(
    recipe: str, lines: list[str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "GPUMEM_HOME": str(home)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(ROOT / "recipes" / "distributed" / recipe),
        "--steps",
        "2",
    ]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout.splitlines()
    for rank in (0, 1):
        assert any(line.startswith(f"rank {rank}/2 · job 127.0.0.1:") for line in out)
    for line in lines:
        assert out.count(line) == 2, (line, done.stdout)
