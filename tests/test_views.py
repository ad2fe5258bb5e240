"""Result views of a run (profiler/views.py): the summary and the top modules, from a RunView."""

from __future__ import annotations

from pathlib import Path

import torch

from profiler import views
from profiler.records import CATEGORIES
from profiler.tracker import MemoryTracker, track_memory

F32 = 4


def _train(mode: str, home: Path) -> MemoryTracker:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with track_memory(model, optimizer, mode=mode, home=home, name="views") as mem:
        for _ in range(2):
            model(torch.randn(4, 8)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            mem.step()
    return mem


def test_summary_of_a_real_run(tmp_path: Path) -> None:
    mem = _train("exact", tmp_path)
    summary = views.summary(mem)
    weights = (8 * 16 + 16 + 16 * 4 + 4) * F32
    assert (summary["name"], summary["mode"], summary["device"]) == ("views", "exact", "cpu")
    assert summary["categories"]["weights"]["current"] == weights
    assert summary["categories"]["weights"]["peak"] == weights
    assert summary["categories"]["gradients"]["peak"] == weights  # SGD: one grad per weight
    assert summary["current_bytes"] == weights  # grads set to None, activations freed
    assert summary["oom"] is False and summary["capacity"] is None
    assert list(summary["categories"]) == [str(c) for c in CATEGORIES]


def test_top_modules_of_a_real_run(tmp_path: Path) -> None:
    mem = _train("exact", tmp_path)
    # Linear 0 saves its input (4x8); ReLU saves its output (4x16), which Linear 2 reuses.
    assert views.top_modules(mem) == [("1", 4 * 16 * F32), ("0", 4 * 8 * F32)]
    assert views.top_modules(mem, limit=1) == [("1", 4 * 16 * F32)]
