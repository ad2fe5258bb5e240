"""FSDP2 (``fully_shard``) on CPU: each rank's memory, sharded parameters named as such.

Run::

    torchrun --nproc_per_node=2 recipes/distributed/fsdp2.py

Each rank trains a small 4-block MLP sharded with ``fully_shard`` (gloo on 127.0.0.1) for a few
steps under ``track_memory`` and prints its table: the weights are this rank's shard (half the
parameters, with FSDP's padding), the peak includes the layers gathered whole during forward
and backward, and below the table the FSDP-specific memory is named within its category
(sharded/unsharded parameters, all-gather and reduce-scatter buffers), as torch's
``FSDPMemTracker`` names it. ``gpumem top`` shows the job as one row; ``gpumem job JOB_ID``
prints the per-rank table.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from profiler import track_memory
from profiler.units import format_bytes


def build(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    blocks = [
        torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )
        for _ in range(4)
    ]
    model = torch.nn.Sequential(*blocks)
    for block in model:
        fully_shard(block)
    fully_shard(model)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args(argv)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build(args.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with track_memory(model, optimizer, name="fsdp2") as mem:
        for _ in range(args.steps):
            model(torch.randn(16, args.width)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    lines = [f"rank {mem.rank}/{mem.world_size} · job {mem.job_id}", str(mem)]
    for label, figures in mem.sublabels().items():
        lines.append(
            f"  {figures['category']:>9} · {label:<16} current {format_bytes(figures['current']):>11}"
            f"   peak {format_bytes(figures['peak']):>11}"
        )
    for r in range(dist.get_world_size()):  # one rank at a time, so the tables do not mix
        if r == rank:
            print("\n".join(lines), flush=True)
        dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
