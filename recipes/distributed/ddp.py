"""DDP on CPU: each rank's memory, the gradient buckets named as communication buffers.

Run::

    torchrun --nproc_per_node=2 recipes/distributed/ddp.py

Each rank trains a small MLP wrapped in ``DistributedDataParallel`` (gloo on 127.0.0.1) for a
few steps under ``track_memory`` and prints its table. DDP keeps a flat copy of the gradients
in its buckets for the all-reduce: they are counted as gradients (sub-label ``ddp_bucket``),
not as temporaries, and they stay after ``zero_grad()`` because DDP keeps them for the next
step. ``track_memory`` may be entered before ``init_process_group``: the rank, world size and
job id come from what torchrun set in the environment until the process group exists.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from profiler import track_memory
from profiler.units import format_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args(argv)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    inner = torch.nn.Sequential(
        torch.nn.Linear(args.width, 4 * args.width),
        torch.nn.GELU(),
        torch.nn.Linear(4 * args.width, args.width),
    )
    model = DistributedDataParallel(inner)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with track_memory(model, optimizer, name="ddp") as mem:
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
