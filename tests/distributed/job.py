"""One rank of the 2-rank job tests/test_distributed.py runs with torchrun (gloo, CPU).

Writes ``$GPUMEM_TEST_OUT/rank<r>.json`` with what gpumem measured beside what torch's
``FSDPMemTracker`` measured on the same model, and the untracked allocator's figures for DDP.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from profiler import track_memory
from profiler.backends.host import heap_bytes_reader


def fsdp_model() -> torch.nn.Module:
    # 511 rows do not split evenly in two: FSDP pads each shard to 256 rows
    torch.manual_seed(0)
    layers = [
        torch.nn.Sequential(torch.nn.Linear(256, 511), torch.nn.ReLU(), torch.nn.Linear(511, 256))
        for _ in range(3)
    ]
    model = torch.nn.Sequential(*layers)
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    return model


def fsdp_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x = torch.randn(16, 256)
    model(x).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def fsdp_figures() -> dict:
    # Both trackers watch the same step: gloo's threads drop the reduce-scatter's inputs when
    # the collective completes, so which frees come before the peak depends on timing, and two
    # separate runs can differ by a layer's unsharded gradient.
    model = fsdp_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    shard_bytes = sum(p._local_tensor.untyped_storage().nbytes() for p in model.parameters())
    tracker = FSDPMemTracker(model, optimizer)
    with tracker, track_memory(model, optimizer, name="fsdp") as mem:
        fsdp_step(model, optimizer)
    torch_peak = sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())
    torch_current = sum(d["Total"] for d in tracker.get_tracker_snapshot("current").values())
    breakdown = mem.breakdown()
    table = mem.compare()
    return {
        "reference_weights": int(table.loc["weights", "reference"]),
        "check_weights": str(table.loc["weights", "check"]),
        "compared_weights": int(table.loc["weights", "measured"]),
        "peak_weights": int(breakdown.loc["weights", "peak"]),
        "torch_peak": torch_peak,
        "torch_current": torch_current,
        "peak": mem.peak_bytes,
        "current": mem.current_bytes,
        "weights": int(breakdown.loc["weights", "current"]),
        "predicted_weights": mem.predicted["weights"],
        "predicted_optimizer": mem.predicted["optimizer"],
        "optimizer": int(breakdown.loc["optimizer", "current"]),
        "other": int(breakdown.loc["other", "current"]),
        "shard_bytes": shard_bytes,
        "sublabels": mem.sublabels(),
    }


def ddp_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 512))
    model = DistributedDataParallel(inner)
    return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def ddp_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for _ in range(2):
        model(torch.randn(8, 512)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()


def ddp_figures() -> dict:
    heap = heap_bytes_reader()
    assert heap is not None
    warm, warm_optimizer = ddp_model()  # one-time costs (imports, gloo's buffers) out of the way
    ddp_steps(warm, warm_optimizer)
    del warm, warm_optimizer
    gc.collect()
    before = heap()
    model, optimizer = ddp_model()
    ddp_steps(model, optimizer)
    gc.collect()
    untracked = heap() - before
    del model, optimizer
    gc.collect()

    model, optimizer = ddp_model()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with track_memory(model, optimizer, name="ddp") as mem:
        ddp_steps(model, optimizer)
    breakdown = mem.breakdown()
    return {
        "untracked_current": untracked,
        "current": mem.current_bytes,
        "param_bytes": param_bytes,
        "temporaries": int(breakdown.loc["temporaries", "current"]),
        "sublabels": mem.sublabels(),
    }


def main() -> None:
    out = os.environ["GPUMEM_TEST_OUT"]
    # entered before the process group exists, as around Lightning's fit()
    with track_memory(name="early") as early:
        env_rank = (early.rank, early.world_size, early.job_id)
        dist.init_process_group("gloo")
        early.step()
    result = {
        "env_rank": env_rank,
        "rank": dist.get_rank(),
        "early_dir": str(early.session_dir),
        "fsdp": fsdp_figures(),
        "ddp": ddp_figures(),
    }
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as handle:
        json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
