"""Not a leak: steady training (nothing should be flagged).

Run from the repository root::

    PYTHONPATH=. python recipes/leaks/steady_training.py --steps 50

The usual loop, done right: the loss is logged with ``loss.item()`` and nothing else outlives its
step. Memory at every step end is the same after the first step (Adam's state), so gpumem's
leak detector stays quiet: ``mem.leaks()`` is empty.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from profiler.tracker import MemoryTracker, track_memory


def main(steps: int = 50, mode: str = "auto") -> MemoryTracker:
    """Train a small MLP with Adam for ``steps`` steps, logging losses as floats."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses: list[float] = []
    with track_memory(model, optimizer, stream=False, mode=mode) as mem:
        for _ in range(steps):
            x, y = torch.randn(256, 128), torch.randn(256, 1)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return mem


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--mode", choices=("auto", "exact", "fast"), default="auto")
    args = parser.parse_args()
    mem = main(args.steps, args.mode)
    print(f"{len(mem.steps)} steps, {len(mem.leaks())} leaks flagged")
