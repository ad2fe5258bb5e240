"""Leak: a loss kept with its autograd graph (``val_losses.append(loss)``).

Run from the repository root::

    PYTHONPATH=. python recipes/leaks/graph_kept.py --steps 12

Each training step also computes a validation loss outside ``torch.no_grad()`` and keeps the
tensor. The tensor carries its autograd graph, and backward never runs on it, so every step's
saved activations stay alive (about 1.5 MiB per step here). gpumem flags the growth within ten
steps and points at the ``val_losses.append(...)`` line: store ``loss.item()`` instead.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from profiler.tracker import MemoryTracker, track_memory


def main(steps: int = 12, mode: str = "auto") -> MemoryTracker:
    """Train a small MLP for ``steps`` steps while keeping each validation loss with its graph."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 256), torch.randn(64, 1)
    x_val, y_val = torch.randn(256, 256), torch.randn(256, 1)
    val_losses = []
    with track_memory(model, optimizer, stream=False, mode=mode) as mem:
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            val_losses.append(nn.functional.mse_loss(model(x_val), y_val))  # LEAK
    return mem


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--mode", choices=("auto", "exact", "fast"), default="auto")
    args = parser.parse_args()
    for leak in main(args.steps, args.mode).leaks():
        print(leak.describe())
