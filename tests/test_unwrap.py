"""track_memory finds the real model and optimizer behind DDP, compile and accelerate's wrappers."""

from __future__ import annotations

import pytest
import torch

from profiler import track_memory

F32 = 4


def test_a_wrapped_model_is_tracked_by_its_own_module_names() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    wrapped = torch.nn.DataParallel(torch.compile(model, backend="eager"))
    with track_memory(wrapped, stream=False) as mem:
        model(torch.randn(3, 4)).sum().backward()
    assert mem.model is model
    assert {a.name for a in mem.module_activity()} == {"Sequential", "0", "1"}
    assert mem.breakdown().loc["weights", "current"] == (4 * 8 + 8 + 8 * 2 + 2) * F32


def test_an_accelerated_optimizer_is_the_optimizer_it_wraps() -> None:
    accelerate = pytest.importorskip("accelerate")
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accelerator = accelerate.Accelerator(cpu=True)
    model, prepared = accelerator.prepare(model, optimizer)
    assert type(prepared).__name__ == "AcceleratedOptimizer"
    with track_memory(model, prepared, stream=False) as mem:
        for _ in range(2):
            accelerator.backward(model(torch.randn(2, 4)).sum())
            prepared.step()
            prepared.zero_grad()
    assert mem.info.optimizer_class == "Adam"
    assert [r.step for r in mem.steps] == [0, 1]
    # Adam: exp_avg and exp_avg_sq like the 20 parameters, and a 4-byte step per tensor
    assert mem.breakdown().loc["optimizer", "current"] == 2 * 20 * F32 + 2 * 4
