"""Leak: tensors added to a dict every step (``predictions[step] = out.detach()``).

Run from the repository root::

    PYTHONPATH=. python recipes/leaks/accumulating_tensors.py --steps 12

The loop keeps every step's predictions "for the epoch metrics". They are detached, so no graph
is kept, but each step adds 256 KiB that is never freed. gpumem flags the growth within ten steps
and points at the line that stores into the dict: keep ``.cpu()`` copies, a running metric, or a
bounded window instead.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from profiler.tracker import MemoryTracker, track_memory


def main(steps: int = 12, mode: str = "auto") -> MemoryTracker:
    """Train a small MLP for ``steps`` steps while keeping every step's output tensor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 128), torch.randn(256, 256)
    predictions = {}
    with track_memory(model, optimizer, stream=False, mode=mode) as mem:
        for step in range(steps):
            out = model(x)
            loss = nn.functional.mse_loss(out, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            predictions[step] = out.detach()  # LEAK
    return mem


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--mode", choices=("auto", "exact", "fast"), default="auto")
    args = parser.parse_args()
    for leak in main(args.steps, args.mode).leaks():
        print(leak.describe())
