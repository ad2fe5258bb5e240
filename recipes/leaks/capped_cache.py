"""Not a leak: memory that grows, then plateaus (a cache with a cap).

Run from the repository root::

    PYTHONPATH=. python recipes/leaks/capped_cache.py --steps 30

The loop keeps the embeddings of the last ``CAP`` batches in an LRU cache (an ``OrderedDict``
that evicts its oldest entry when full). Memory grows for the first ``CAP`` steps, 256 KiB a
step, then stays flat. gpumem's leak detector may start a short leak hunt while it grows, but
the growth stops before it is confirmed, so nothing is flagged: ``mem.leaks()`` is empty.
(A cache whose cap is reached only after more steps than the detector's window is reported while
it grows and cleared as soon as it plateaus.)
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

import torch
from torch import nn

from profiler.tracker import MemoryTracker, track_memory

CAP = 5


class LRUCache:
    """Keeps at most ``cap`` tensors, evicting the least recently used."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.entries: OrderedDict[int, torch.Tensor] = OrderedDict()

    def put(self, key: int, value: torch.Tensor) -> None:
        """Store ``value`` under ``key``, evicting the oldest entry when full."""
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.cap:
            self.entries.popitem(last=False)


def main(steps: int = 30, mode: str = "auto") -> MemoryTracker:
    """Train a small MLP for ``steps`` steps, caching the last ``CAP`` batch embeddings."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    cache = LRUCache(CAP)
    with track_memory(model, optimizer, stream=False, mode=mode) as mem:
        for step in range(steps):
            x, y = torch.randn(256, 128), torch.randn(256, 1)
            hidden = model[1](model[0](x))
            loss = nn.functional.mse_loss(model[2](hidden), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            cache.put(step, hidden.detach())
    return mem


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--mode", choices=("auto", "exact", "fast"), default="auto")
    args = parser.parse_args()
    mem = main(args.steps, args.mode)
    print(f"{len(mem.steps)} steps, {len(mem.leaks())} leaks flagged")
