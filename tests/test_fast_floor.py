"""Fast mode at the hook floor: what it does per step, and what it never does.

Root-module and optimizer hooks only on most steps (global module hooks on sampled steps, where
the exact ledger attributes memory to modules), one gradient claim per step, KV caches walked once
per step, records the garbage collector does not track; off CUDA it measures in exact mode.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod

from profiler import track_memory
from profiler.tracking import engine as engine_module
from profiler.tracking import fast as fast_module
from profiler.tracking.known import KnownTensors

F32 = 4


def _mlp() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(8, 16)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_global_module_hooks_only_on_the_sampled_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MODULE_SAMPLE_EVERY", 3)
    model, optimizer = _mlp()
    hooked: list[bool] = []
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
        for _ in range(7):
            hooked.append(bool(module_mod._global_forward_pre_hooks))
            _step(model, optimizer)
    assert hooked == [True, False, False, True, False, False, True]  # steps 0, 3, 6
    assert not module_mod._global_forward_pre_hooks and not module_mod._global_forward_hooks
    modules = mem.modules()
    assert modules.loc["0", "calls"] == 3  # one call in each sampled step
    # the sampled steps measured the modules exactly: Linear(16, 32) saves its input (8 x 16)
    # for the weight's gradient; ReLU saves its output (8 x 32)
    assert modules.loc["0", "activations"] == 8 * 16 * F32
    assert modules.loc["1", "activations"] == 8 * 32 * F32
    assert modules["backward_peak"].notna().all()
    notes = [e for e in mem.events if "module_every" in e.data]
    assert len(notes) == 1 and "steps 0, 3, 6" in notes[0].message
    # the steps in between kept the counter's phases
    assert len(mem.steps) == 7
    assert {str(s.phase) for s in mem.samples} >= {"forward", "backward", "optimizer"}


def test_one_gradient_claim_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    claims: list[int] = []
    original = KnownTensors.claim_model_grads

    def counting(self: KnownTensors) -> None:
        claims.append(1)
        original(self)

    monkeypatch.setattr(KnownTensors, "claim_model_grads", counting)
    model, optimizer = _mlp()
    with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as mem:
        for _ in range(5):
            _step(model, optimizer)
            assert len(claims) == len(mem.steps)
    params = sum(p.numel() * F32 for p in model.parameters())
    assert mem.breakdown().loc["gradients", "peak"] == params


def test_kv_caches_are_walked_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import DynamicCache

    walks: list[int] = []
    original = KnownTensors._claim_kv

    def counting(self: KnownTensors, obj: object) -> None:
        walks.append(1)
        original(self, obj)

    monkeypatch.setattr(KnownTensors, "_claim_kv", counting)

    class Decoder(nn.Module):
        """Appends one position per call to the cache it is handed, and returns it."""

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor, past_key_values: DynamicCache) -> dict:
            kv = self.proj(x).view(1, 1, 1, 8)
            past_key_values.update(kv, kv, 0)
            return {"past_key_values": past_key_values}

    model = Decoder()
    cache = DynamicCache()
    with torch.no_grad(), track_memory(model, mode="fast", stream=False, leaks=False) as mem:
        for _ in range(6):
            model(torch.randn(1, 8), past_key_values=cache)
            mem.step()
    assert len(walks) == 6 + 1  # one walk per step, at the forward's end; one at the block's end
    assert mem.breakdown().loc["kv_cache", "current"] == 2 * 6 * 8 * F32


def test_the_tracker_causes_no_full_collection() -> None:
    full: list[int] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(1)

    model = nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 4)
    gc.collect()
    threshold = gc.get_threshold()
    gc.set_threshold(100, 2, 2)  # collections 50x as often: a long run's worth in 3,000 steps
    gc.callbacks.append(on_gc)
    try:
        with track_memory(model, optimizer, mode="fast", stream=False) as mem:
            for _ in range(3_000):
                model(x).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
            kept = len(mem._engine.history.samples.items)
    finally:
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*threshold)
    assert kept >= 12_000  # four samples a step, all kept
    # full collections happen when long-lived tracked objects pile up; the records are plain
    # tuples of atoms, which the collector untracks
    assert full == []
    history = mem._engine.history
    assert not gc.is_tracked(history.samples.items[len(history.samples.items) // 2])
    assert not gc.is_tracked(history.steps.items[len(history.steps.items) // 2])


def test_fast_mode_off_cuda_is_exact_with_a_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_module, "CPU_HEAP_COUNTER", False)
    model, optimizer = _mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with track_memory(model, optimizer, mode="fast", stream=False, leaks=False) as fast:
            for _ in range(2):
                _step(model, optimizer)
    notices = [str(w.message) for w in caught if "tensor-only counter" in str(w.message)]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert fast.mode == "exact"
    with track_memory(model, optimizer, mode="exact", stream=False, leaks=False) as exact:
        for _ in range(2):
            _step(model, optimizer)
    assert fast.peak_bytes == exact.peak_bytes
