"""A training run that dies on a simulated small GPU, and the post-mortem it leaves behind.

Run it (CPU is fine, no GPU needed)::

    python recipes/oom/die_on_small_gpu.py            # a 28 MiB simulated device
    python recipes/oom/die_on_small_gpu.py --capacity 1GB --batch 512

It trains a small residual MLP with AdamW under ``track_memory(capacity=...)``. The first step
fits; the second needs the optimizer state on top of the activations and raises
``profiler.SimulatedOutOfMemoryError`` (a ``torch.OutOfMemoryError``) exactly where a real
device would run out. On the way out gpumem writes the report (JSON, Markdown and HTML) and warns
its path; this program then prints the ranked suggestions, each with the bytes it saves and
whether the run fits after it. ``fit_with_top_suggestion.py`` applies the top one.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from profiler import SimulatedOutOfMemoryError, track_memory
from profiler.units import format_bytes

#: The simulated device this recipe dies on.
DEFAULT_CAPACITY = "28MiB"
DEFAULT_BATCH = 1024
#: Samples in the data set (it lives outside the tracked block; batches are views of it).
DATASET = 4096


class Block(nn.Module):
    """A residual MLP block: x + fc2(relu(fc1(x)))."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    """A stack of residual blocks and a classifier head; optional per-block checkpointing."""

    def __init__(self, width: int, hidden: int, depth: int, classes: int = 10) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, hidden) for _ in range(depth))
        self.head = nn.Linear(width, classes)
        self.checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.head(x)


@dataclass(frozen=True, slots=True)
class Setup:
    """The run's knobs: what the suggestions change."""

    batch: int = DEFAULT_BATCH
    accumulation: int = 1
    checkpointing: bool = False
    autocast: bool = False
    width: int = 128
    hidden: int = 512
    depth: int = 6
    steps: int = 3


def train(setup: Setup, capacity: str | int | None, *, stream: bool = True):
    """Train ``setup.steps`` optimizer steps under ``track_memory``; returns the tracker.

    Raises:
        SimulatedOutOfMemoryError: the run does not fit ``capacity`` (the tracker is on the
            exception as ``exc.gpumem``).
    """
    torch.manual_seed(0)
    model = Net(setup.width, setup.hidden, setup.depth)
    model.checkpointing = setup.checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if not 1 <= setup.batch <= DATASET:
        raise ValueError(f"batch must be between 1 and {DATASET}, got {setup.batch}")
    data = torch.randn(DATASET, setup.width)
    labels = torch.randint(0, 10, (DATASET,))
    mem = track_memory(model, optimizer, capacity=capacity, stream=stream, name="oom-recipe")
    try:
        with mem:
            for _ in range(setup.steps):
                for k in range(setup.accumulation):
                    start = (k * setup.batch) % (DATASET - setup.batch + 1)
                    x = data[start : start + setup.batch]
                    y = labels[start : start + setup.batch]
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.autocast):
                        loss = nn.functional.cross_entropy(model(x), y)
                    (loss / setup.accumulation).backward()
                    del loss
                optimizer.step()
                optimizer.zero_grad()
    except torch.OutOfMemoryError as exc:
        exc.gpumem = mem  # type: ignore[attr-defined]
        raise
    return mem


def print_report(mem) -> None:
    """The report's path and its ranked suggestions, one line each."""
    report = mem.oom_report
    if report is None:
        print("no report was written (see the warning above)")
        return
    print(f"report: {report.path.with_suffix('.html')}")
    print(
        f"failed in {report.phase} of step {report.step} asking for "
        f"{format_bytes(report.requested)} with {format_bytes(report.free)} free "
        f"of {format_bytes(report.capacity)}"
    )
    print("suggestions, most bytes saved first:")
    for i, s in enumerate(report.suggestions, 1):
        fits = {True: "fits", False: "does not fit", None: "?"}[s.fits]
        print(f"  {i}. [{s.kind}] {s.title}: saves {format_bytes(s.saves_bytes)}, {fits}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", default=DEFAULT_CAPACITY)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    args = parser.parse_args(argv)
    try:
        mem = train(Setup(batch=args.batch), args.capacity)
    except SimulatedOutOfMemoryError as exc:
        print(f"out of memory, as expected: {exc}")
        print_report(exc.gpumem)  # type: ignore[attr-defined]
        return 0
    print(f"it fit: peak {format_bytes(mem.peak_bytes)} (try a smaller --capacity)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
