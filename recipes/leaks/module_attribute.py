"""Leak: a module attribute that stores activations on every forward.

Run from the repository root::

    PYTHONPATH=. python recipes/leaks/module_attribute.py --steps 12

``Net.forward`` appends its hidden activation to ``self.hidden_states`` "for debugging". The list
lives as long as the model, and every entry still carries its autograd graph, so each step adds
512 KiB. gpumem flags the growth within ten steps and points at the ``append`` in ``forward``:
keep only the latest, detached (``self.last_hidden = h.detach()``), or clear it each step.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from profiler.tracker import MemoryTracker, track_memory


class Net(nn.Module):
    """A two-layer MLP that (wrongly) keeps every hidden activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(128, 512)
        self.fc2 = nn.Linear(512, 1)
        self.hidden_states: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        self.hidden_states.append(h)  # LEAK
        return self.fc2(h)


def main(steps: int = 12, mode: str = "auto") -> MemoryTracker:
    """Train ``Net`` for ``steps`` steps."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 128), torch.randn(256, 1)
    with track_memory(model, optimizer, stream=False, mode=mode) as mem:
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return mem


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--mode", choices=("auto", "exact", "fast"), default="auto")
    args = parser.parse_args()
    for leak in main(args.steps, args.mode).leaks():
        print(leak.describe())
