"""Gradient accumulation: ``modules()`` reports per-micro-batch figures, not their sum.

Each forward pass of the outermost module is one micro-batch; a module's ``activations`` are the
most it saved in any one micro-batch. Sizes are exact bytes from shapes: the MLP below saves its
input (for the first Linear's weight gradient) and the ReLU's output (for the ReLU's and the
second Linear's backward).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from profiler import track_memory

F32 = 4
BATCH, IN, HIDDEN, OUT = 32, 16, 64, 8
MICRO_BATCHES = 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def _accumulate(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        for _ in range(MICRO_BATCHES):
            x = torch.randn(BATCH, IN)  # made in the block: a temporary until saved
            (model(x).square().mean() / MICRO_BATCHES).backward()
        optimizer.step()
        optimizer.zero_grad()


ONE_MICRO_BATCH = BATCH * IN * F32 + BATCH * HIDDEN * F32  # the input and the ReLU output


@pytest.mark.parametrize("steps", [1, 2])
def test_root_activations_are_one_micro_batch_of_four(steps: int) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with track_memory(model, optimizer, stream=False, mode="exact") as mem:
        _accumulate(model, optimizer, steps)
    table = mem.modules()
    assert table.loc["Sequential", "activations_inclusive"] == ONE_MICRO_BATCH
    assert table.loc["0", "activations"] == BATCH * IN * F32
    assert table.loc["1", "activations"] == BATCH * HIDDEN * F32
    assert table.loc["2", "activations"] == 0  # its input is the ReLU's output, saved already
    # calls is a total over the run
    assert table.loc["Sequential", "calls"] == MICRO_BATCHES * steps
    # and the run's peak holds one micro-batch's activations, not four: the model's and the
    # output the loss's square() saves (outside any module)
    assert mem.breakdown().loc["activations", "peak"] == ONE_MICRO_BATCH + BATCH * OUT * F32


def test_the_largest_micro_batch_is_reported() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with track_memory(model, optimizer, stream=False, mode="exact") as mem:
        for batch in (BATCH, 2 * BATCH, BATCH // 2):  # uneven micro-batches in one step
            model(torch.randn(batch, IN)).sum().backward()
        optimizer.step()
    largest = 2 * BATCH * (IN + HIDDEN) * F32
    assert mem.modules().loc["Sequential", "activations_inclusive"] == largest
