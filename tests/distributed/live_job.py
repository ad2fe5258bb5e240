"""One rank of a 2-rank DDP job that stays live until told to end (tests/test_export.py).

Each rank trains 3 steps under ``track_memory``, writes ``$GPUMEM_TEST_OUT/rank<r>.json``
(its session directory, step and peak), then waits inside the block for
``$GPUMEM_TEST_OUT/release`` (at most 120 s), so that the exporter scrapes live sessions.
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from profiler import track_memory


def main() -> None:
    out = os.environ["GPUMEM_TEST_OUT"]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with track_memory(model, optimizer, name="live") as mem:
        for _ in range(3):
            model(torch.randn(4, 64)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        figures = {
            "session_dir": str(mem.session_dir),
            "peak": mem.peak_bytes,
            "rank": rank,
            "step": mem.info.step,
        }
        with open(os.path.join(out, f"rank{rank}.json.tmp"), "w") as handle:
            json.dump(figures, handle)
        os.replace(os.path.join(out, f"rank{rank}.json.tmp"), os.path.join(out, f"rank{rank}.json"))
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(out, "release")) and time.monotonic() < deadline:
            time.sleep(0.05)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
