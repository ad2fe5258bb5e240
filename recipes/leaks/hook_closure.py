"""Leak: a forward hook whose closure keeps every output (``features.append(output)``).

Run from the repository root::

    PYTHONPATH=. python recipes/leaks/hook_closure.py --steps 12

A hook registered to "look at" hidden features appends each output to a list captured by its
closure. Nothing ever clears the list or removes the hook, so every step's 512 KiB hidden output
stays alive. gpumem flags the growth within ten steps and points at the ``append`` inside the
hook: detach and clear the list after use, or remove the hook with ``handle.remove()``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from profiler.tracker import MemoryTracker, track_memory


def capture_features(module: nn.Module) -> list[torch.Tensor]:
    """Register a forward hook on ``module`` that keeps its outputs; returns the list."""
    features: list[torch.Tensor] = []

    def keep_output(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        features.append(output)  # LEAK

    module.register_forward_hook(keep_output)
    return features


def main(steps: int = 12, mode: str = "auto") -> MemoryTracker:
    """Train a small MLP for ``steps`` steps with a hook that keeps the hidden features."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    capture_features(model[1])
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
