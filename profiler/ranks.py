"""Which rank of which job this process is: from torch.distributed, else from the launcher.

``torch.distributed`` answers rank and world size once a process group exists. Before that
(``track_memory`` entered around Lightning's ``fit()``, which creates the group inside) the
launchers have already said it in the environment: torchrun, Lightning and accelerate set
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``TORCHELASTIC_RUN_ID``; SLURM sets
``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS`` and ``SLURM_JOB_ID``. Asked again later, the
answer follows the process group when it appears. Reading it never initialises anything.

The job id groups a job's ranks: ``GPUMEM_JOB_ID`` if set, else torchelastic's run id, else
SLURM's job id, else (torchrun without ``--rdzv-id`` says ``none``) the rendezvous address
``MASTER_ADDR:MASTER_PORT``, unique among the jobs running at one time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Ranks", "current_ranks"]


@dataclass(frozen=True, slots=True)
class Ranks:
    """This process's place in a distributed job; ``None`` for what nobody said."""

    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    job_id: str | None = None

    def as_meta(self) -> dict[str, int | str | None]:
        """The session metadata fields (``rank``, ``local_rank``, ``world_size``, ``job_id``)."""
        return {
            "rank": self.rank,
            "local_rank": self.local_rank,
            "world_size": self.world_size,
            "job_id": self.job_id,
        }


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _job_id(env: Mapping[str, str]) -> str | None:
    for name in ("GPUMEM_JOB_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        value = env.get(name, "").strip()
        if value and value.lower() != "none":
            return value
    addr, port = env.get("MASTER_ADDR", "").strip(), env.get("MASTER_PORT", "").strip()
    if addr and port and (env.get("WORLD_SIZE") or env.get("TORCHELASTIC_RUN_ID")):
        return f"{addr}:{port}"
    return None


def _process_group() -> tuple[int, int] | None:
    dist = sys.modules.get("torch.distributed")  # never imported (nor initialised) from here
    if dist is None:
        return None
    try:
        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
    except Exception:  # noqa: BLE001 - a half-torn-down group: fall back to the environment
        return None
    return None


def current_ranks(env: Mapping[str, str] | None = None) -> Ranks:
    """Rank, local rank, world size and job id now (``env`` defaults to ``os.environ``)."""
    env = os.environ if env is None else env
    group = _process_group()
    rank: int | None
    world_size: int | None
    if group is not None:
        rank, world_size = group
    else:
        rank = _int(env, "RANK", "SLURM_PROCID")
        world_size = _int(env, "WORLD_SIZE", "SLURM_NTASKS")
    local_rank = _int(env, "LOCAL_RANK", "SLURM_LOCALID")
    if rank is None and world_size is None and local_rank is None:
        return Ranks(job_id=env.get("GPUMEM_JOB_ID") or None)
    return Ranks(rank, local_rank, world_size, _job_id(env))
