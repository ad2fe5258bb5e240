"""200 steps of steady training of a tiny GPT-2 raise no leak alert (and start no leak hunt)."""

from __future__ import annotations

import warnings

import pytest
import torch

from profiler.tracker import track_memory


@pytest.mark.parametrize(
    ("mode", "steps"),
    [
        # fast mode reads the (noisy) allocator counter: the harder case for false alarms
        ("fast", 200),
        # the exact ledger costs ~10x per step on this tiny model's small ops; fewer steps
        ("exact", 25),
    ],
)
def test_tiny_gpt2_steady_training_is_not_flagged(mode: str, steps: int) -> None:
    pytest.importorskip("transformers")
    from tiny_models import tiny_gpt2

    model = tiny_gpt2(n_positions=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with track_memory(model, optimizer, stream=False, mode=mode) as mem:
            for _ in range(steps):
                ids = torch.randint(0, 1000, (2, 16))
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
    assert len(mem.steps) == steps
    assert mem.mode == mode
    assert mem.leaks() == []
    assert [w for w in caught if "memory leak" in str(w.message)] == []
    assert [e for e in mem.events if e.kind in ("leak", "leak_hunt")] == []
